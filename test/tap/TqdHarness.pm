# TqdHarness: starting, watching and stopping tqd processes in the TAP
# tests (010, 012 and their sanitized runs), so that each test file only
# says what it tests.
#
#   tq_node($name, $naptime)  a started cluster with tq preloaded, the
#                             worker on database postgres, CREATE EXTENSION tq
#   TqdHarness::setup(node => $node, dir => $dir, tqd => $bin,
#                     sanitized => $bool, env => { NAME => value, ... });
#   start_tqd($name, $conf)   fork + exec tqd -c $conf, output in $dir/$name.log
#   started($name)            waits until it is connected (signals are set by then)
#   wait_exit($name, $secs)   its exit status (128 + signal), undef on timeout
#   tqd_log($name), poll_log($name, $re), poll_count($name, $re, $n)
#   sq($sql), poll($sql, $secs)  queries on the node; poll waits for 't'
#   tqd_conf($name, $text)   $dir/$name: a [tqd] section that connects to
#                             the node (quick flushes and polls, 4 slots),
#                             then $text (more [tqd] keys, queues); its path
#   start_httpd($name, @args) worker/test/tqtest_httpd (the http handler's
#                             test server) with @args; its port.  httpd_port,
#                             httpd_log($name): its port, its request log
#   no_sanitizer_reports()    with sanitized tqd: asserts that none wrote a report
#
# Every wait polls a condition with a deadline.  An END block kills any tqd
# a test started and did not reap, so a test that dies half-way leaves no
# daemon behind.
package TqdHarness;

use strict;
use warnings;

use Exporter 'import';
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT = qw(tq_node tqd_conf start_tqd tqd_pid started wait_exit tqd_log poll_log poll_count sq poll
  no_sanitizer_reports start_httpd httpd_port httpd_log);

my %opt;
my %procs;

sub tq_node
{
	my ($name, $naptime) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf(
		'postgresql.conf', qq{
shared_preload_libraries = 'tq'
tq.database = 'postgres'
tq.worker_naptime = '$naptime'
tq.maintenance_interval = '1s'
});
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION tq');
	return $node;
}

sub setup
{
	%opt = @_;
	$opt{env} //= {};
	!defined $opt{tqd} or -x $opt{tqd} or BAIL_OUT("$opt{tqd} is not built (make -C worker)");
	return;
}

sub start_tqd
{
	my ($name, $path) = @_;
	my $dir = $opt{dir};
	my $log = "$dir/$name.log";
	unlink($log);
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		$ENV{$_} = $opt{env}{$_} for keys %{ $opt{env} };
		if ($opt{sanitized})
		{
			$ENV{ASAN_OPTIONS} = "log_path=$dir/asan-$name:detect_leaks=1";
			$ENV{UBSAN_OPTIONS} = "log_path=$dir/ubsan-$name:print_stacktrace=1";
		}
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', $log);
		open(STDERR, '>&', \*STDOUT);
		exec($opt{tqd}, '-c', $path) or die "exec $opt{tqd}: $!";
	}
	$procs{$name} = { pid => $pid, log => $log };
	return $pid;
}

sub tqd_conf
{
	my ($name, $text) = @_;
	my $path = "$opt{dir}/$name";
	my ($host, $port) = ($opt{node}->host, $opt{node}->port);
	open(my $fh, '>', $path) or die "$path: $!";
	print $fh "[tqd]\nconninfo = host=$host port=$port dbname=postgres\nslots = 4\n"
	  . "flush_interval = 5ms\npoll_interval = 200ms\n$text";
	close($fh);
	return $path;
}

sub tqd_pid { return $procs{ $_[0] }{pid}; }

my %servers;

sub start_httpd
{
	my ($name, @args) = @_;
	my $dir = $opt{dir};
	my $bin = "$ENV{TQ_SRCDIR}/worker/test/tqtest_httpd";
	-x $bin or BAIL_OUT("$bin is not built (make -C worker check)");
	my $out = "$dir/httpd-$name.out";
	my $log = "$dir/httpd-$name.log";
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>', $out);
		open(STDERR, '>&', \*STDOUT);
		exec($bin, '--log', $log, @args) or die "exec $bin: $!";
	}
	$servers{$name} = { pid => $pid, log => $log };
	my $deadline = time + 10;
	my $port;
	while (time < $deadline)
	{
		($port) = (-e $out ? slurp_file($out) : '') =~ /listening port=(\d+)/;
		last if $port;
		usleep(20_000);
	}
	die "$name: the test server did not start: " . (-e $out ? slurp_file($out) : '') unless $port;
	$servers{$name}{port} = $port;
	return $port;
}

sub httpd_port { return $servers{ $_[0] }{port}; }
sub httpd_log { return $servers{ $_[0] }{log}; }

END
{
	for my $p (values %procs)
	{
		kill 'KILL', $p->{pid} unless $p->{reaped};
	}
	kill 'TERM', $_->{pid} for values %servers;
}

sub started
{
	my $name = shift;
	my $deadline = time + 30;
	while (time < $deadline)
	{
		return 1 if -e $procs{$name}{log} && slurp_file($procs{$name}{log}) =~ /msg=connected conn=work/;
		usleep(20_000);
	}
	return 0;
}

sub tqd_log { my $n = shift; return -e $procs{$n}{log} ? slurp_file($procs{$n}{log}) : ''; }

sub wait_exit
{
	my ($name, $secs) = @_;
	my $pid = tqd_pid($name);
	my $deadline = time + $secs;
	while (time < $deadline)
	{
		my $r = waitpid($pid, POSIX::WNOHANG());
		if ($r == $pid)
		{
			$procs{$name}{reaped} = 1;
			return ($? & 127) ? 128 + ($? & 127) : $? >> 8;
		}
		usleep(20_000);
	}
	return undef;
}

sub sq { return $opt{node}->safe_psql('postgres', shift); }

sub poll
{
	my ($sql, $secs) = @_;
	my $deadline = time + ($secs // 60);
	while (time < $deadline)
	{
		return 1 if sq($sql) eq 't';
		usleep(50_000);
	}
	return 0;
}

sub poll_count
{
	my ($name, $re, $n) = @_;
	my $deadline = time + 60;
	while (time < $deadline)
	{
		my @m = (tqd_log($name) =~ /$re/g);
		return 1 if @m >= $n;
		usleep(50_000);
	}
	return 0;
}

sub poll_log
{
	my ($name, $re) = @_;
	my $deadline = time + 30;
	while (time < $deadline)
	{
		return 1 if tqd_log($name) =~ $re;
		usleep(50_000);
	}
	return 0;
}

# kill -9 leaves no report; every other tqd exited through its checks.
sub no_sanitizer_reports
{
	my $dir = $opt{dir};
	my @reports = grep { -s $_ } glob("$dir/asan-* $dir/ubsan-*");
	is(scalar(@reports), 0, 'no sanitizer report from any tqd (AddressSanitizer, LeakSanitizer, UBSan)');
	diag(slurp_file($_)) for @reports;
	return;
}

1;
