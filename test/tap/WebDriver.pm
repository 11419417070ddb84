# WebDriver: headless Chromium driven through chromedriver (the W3C
# WebDriver protocol over HTTP, with HTTP::Tiny and JSON::PP from Perl's
# core), for the dashboard test.
#
#   my $wd = WebDriver->start(dir => $dir);   chromedriver + a browser session
#   $wd->get($url);
#   $wd->text($css)        the element's visible text (undef: no such element)
#   $wd->click($css); $wd->type($css, $text); $wd->clear($css)
#   $wd->js($script, @args)  runs a function body, returns its value
#   $wd->wait_until(sub { ... }, $secs)  polls the condition with a deadline
#   $wd->stop              ends the session and chromedriver (END does too)
#
# Debian's chromium and chromium-driver (/usr/bin/chromium,
# /usr/bin/chromedriver); TQ_CHROMIUM and TQ_CHROMEDRIVER override the
# paths.  The browser runs headless without its sandbox (which needs user
# namespaces, often missing in containers and CI), with a profile and HOME
# in the test's directory.
package WebDriver;

use strict;
use warnings;

use HTTP::Tiny;
use IO::Socket::INET;
use JSON::PP;
use POSIX ();
use Time::HiRes qw(time usleep);

my @live;    # drivers to stop at exit

# The W3C element reference key.
my $ELEMENT = 'element-6066-11e4-a52e-4f735466cecf';

sub free_port
{
	my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1', LocalPort => 0)
	  or die "no free port: $!";
	my $port = $s->sockport;
	close($s);
	return $port;
}

sub start
{
	my ($class, %opt) = @_;
	my $dir = $opt{dir} or die 'WebDriver->start needs dir';
	my $driver = $ENV{TQ_CHROMEDRIVER} // '/usr/bin/chromedriver';
	my $browser = $ENV{TQ_CHROMIUM} // '/usr/bin/chromium';
	-x $driver or die "$driver is missing (Debian package chromium-driver)";
	-x $browser or die "$browser is missing (Debian package chromium)";
	my $port = free_port();
	my $self = bless {
		dir => $dir,
		base => "http://127.0.0.1:$port",
		http => HTTP::Tiny->new(timeout => 60),
		json => JSON::PP->new->utf8->canonical,
	}, $class;

	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		$ENV{HOME} = $dir;
		$ENV{XDG_CONFIG_HOME} = "$dir/xdg-config";
		$ENV{XDG_CACHE_HOME} = "$dir/xdg-cache";
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', "$dir/chromedriver.log");
		open(STDERR, '>&', \*STDOUT);
		exec($driver, "--port=$port", '--allowed-ips=127.0.0.1', "--log-path=$dir/chromedriver.log")
		  or die "exec $driver: $!";
	}
	$self->{pid} = $pid;
	push @live, $self;

	my $ready = $self->wait_until(
		sub {
			my $r = $self->{http}->get("$self->{base}/status");
			return $r->{success} && $self->{json}->decode($r->{content})->{value}{ready};
		},
		30);
	die "chromedriver did not start within 30 s; see $dir/chromedriver.log" unless $ready;

	my $caps = {
		capabilities => {
			alwaysMatch => {
				browserName => 'chrome',
				'goog:chromeOptions' => {
					binary => $browser,
					args => [
						'--headless=new', '--no-sandbox',
						'--disable-gpu', '--disable-dev-shm-usage',
						'--window-size=1400,1600', "--user-data-dir=$dir/chromium-profile",
						'--no-first-run', '--disable-extensions',
					],
				},
			},
		},
	};
	my $v = $self->cmd('POST', '/session', $caps);
	$self->{session} = $v->{sessionId} or die 'no WebDriver session: ' . $self->{json}->encode($v);
	return $self;
}

# One WebDriver command; dies with the driver's message on an error.
sub cmd
{
	my ($self, $method, $path, $body) = @_;
	my $url = $self->{base} . ($path =~ m{^/session$} ? $path : "/session/$self->{session}$path");
	my $r = $self->{http}->request(
		$method, $url,
		{
			headers => { 'Content-Type' => 'application/json' },
			defined $body ? (content => $self->{json}->encode($body)) : (),
		});
	my $v = eval { $self->{json}->decode($r->{content}) }->{value};
	if (!$r->{success})
	{
		my $err = ref $v eq 'HASH' ? "$v->{error}: $v->{message}" : $r->{content};
		die "WebDriver $method $path: $err\n";
	}
	return $v;
}

sub get { my ($self, $url) = @_; $self->cmd('POST', '/url', { url => $url }); return; }

# The element matching a CSS selector, or undef.
sub find
{
	my ($self, $css) = @_;
	my $v = $self->cmd('POST', '/elements', { using => 'css selector', value => $css });
	return @$v ? $v->[0]{$ELEMENT} : undef;
}

# on_element($css, $sub): $sub->($element_id) on the element the
# selector finds; found again and retried when the page replaced it in
# between (a refresh): "stale element reference".
sub on_element
{
	my ($self, $css, $sub) = @_;
	for my $try (1 .. 5)
	{
		my $e = $self->find($css);
		return undef unless defined $e;
		my $r = eval { $sub->($e) };
		return $r unless $@;
		die $@ unless $@ =~ /stale element/ && $try < 5;
	}
	return undef;
}

sub text
{
	my ($self, $css) = @_;
	return $self->on_element($css, sub { $self->cmd('GET', "/element/$_[0]/text") });
}

sub click
{
	my ($self, $css) = @_;
	$self->find($css) // die "no element $css to click\n";
	$self->on_element($css, sub { $self->cmd('POST', "/element/$_[0]/click", {}); 1 });
	return;
}

sub clear
{
	my ($self, $css) = @_;
	$self->find($css) // die "no element $css to clear\n";
	$self->on_element($css, sub { $self->cmd('POST', "/element/$_[0]/clear", {}); 1 });
	return;
}

sub type
{
	my ($self, $css, $text) = @_;
	$self->find($css) // die "no element $css to type into\n";
	$self->on_element($css, sub { $self->cmd('POST', "/element/$_[0]/value", { text => $text }); 1 });
	return;
}

sub js
{
	my ($self, $script, @args) = @_;
	return $self->cmd('POST', '/execute/sync', { script => $script, args => \@args });
}

# Polls $cond (a sub returning true when done) until it holds or $secs pass.
sub wait_until
{
	my ($self, $cond, $secs) = @_;
	my $deadline = time + ($secs // 20);
	while (1)
	{
		my $ok = eval { $cond->() };
		return $ok if $ok;
		return 0 if time > $deadline;
		usleep(100_000);
	}
}

sub stop
{
	my $self = shift;
	return unless $self->{pid};
	eval { $self->cmd('DELETE', '') if $self->{session}; };
	kill 'TERM', $self->{pid};
	my $deadline = time + 10;
	while (time < $deadline)
	{
		last if waitpid($self->{pid}, POSIX::WNOHANG()) == $self->{pid};
		usleep(50_000);
	}
	kill 'KILL', $self->{pid};
	waitpid($self->{pid}, 0);
	$self->{pid} = undef;
	return;
}

END
{
	$_->stop for @live;
}

1;
