/*
 * main.c
 *	  tqd's entry point: options, the configuration check, the loop.
 *
 *	  tqd -c FILE                 run
 *	  tqd -c FILE --check-config  read and check FILE, print the verdict, exit
 *	  tqd --print-defaults        print a configuration with every key at its default
 *	  tqd --version
 *
 * Exit status: 0 after a clean stop (SIGTERM, or SIGINT) or a good check;
 * 1 on a bad configuration or bad options; 70 (EX_SOFTWARE) if the loop
 * failed to start.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "tqd.h"

static void
usage(FILE *out)
{
	fprintf(out, "usage: tqd -c FILE [--check-config]\n"
				 "       tqd --print-defaults | --version | --help\n"
				 "\n"
				 "  -c, --config FILE   the configuration file (INI; see tqd.conf.sample)\n"
				 "      --check-config  check the file and exit: 0 if good, 1 if not\n"
				 "      --print-defaults  print every key at its default\n"
				 "  -V, --version       print the version\n");
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},   {"check-config", no_argument, NULL, 'k'},
		{"print-defaults", no_argument, NULL, 'p'}, {"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
	};
	const char *path = NULL;
	bool check = false;
	int opt;
	char err[1024];
	Config *config;
	Daemon *d;
	int status;

	while ((opt = getopt_long(argc, argv, "c:Vh", longopts, NULL)) != -1)
	{
		switch (opt)
		{
			case 'c':
				path = optarg;
				break;
			case 'k':
				check = true;
				break;
			case 'p':
				config_print_defaults(stdout);
				return 0;
			case 'V':
				printf("tqd %s\n", TQD_VERSION);
				return 0;
			case 'h':
				usage(stdout);
				return 0;
			default:
				usage(stderr);
				return 1;
		}
	}
	if (optind < argc || path == NULL)
	{
		if (path == NULL)
			fprintf(stderr, "tqd: no configuration file: give one with -c FILE\n");
		else
			fprintf(stderr, "tqd: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		return 1;
	}

	config = config_load(path, err, sizeof(err));
	if (config == NULL)
	{
		fprintf(stderr, "tqd: %s\n", err);
		return 1;
	}
	if (check)
	{
		config_warn_exposed(config, stderr);
		printf("%s: ok (%d queue%s)\n", path, config->nqueues, config->nqueues == 1 ? "" : "s");
		config_free(config);
		return 0;
	}
	log_min_level = config->log_level;
	config_warn_exposed(config, NULL);
	d = daemon_new(EV_DEFAULT, config, path);
	if (d == NULL)
		return 70;
	status = daemon_run(d);
	daemon_free(d);
	return status;
}
