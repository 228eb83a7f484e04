/* What a service under test does that a shell cannot (test_service_operate.py):
 *   service_probe listen PORT DELAY_MS   after DELAY_MS, accept on 127.0.0.1 and 0.0.0.0:PORT forever
 *   service_probe hog MB                 touch MB mebibytes, one at a time, then report and wait
 *   service_probe echo PORT              on 0.0.0.0:PORT, send each connection back what it sends,
 *                                        and close once it has ended its input (a child each)
 */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "listen")) {
		usleep(atoi(argv[3]) * 1000);
		int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
		if (bind(s, (struct sockaddr *)&addr, sizeof(addr)) || listen(s, 16)) {
			perror("listen");
			return 1;
		}
		printf("listening\n");
		fflush(stdout);
		for (;;) {
			int c = accept(s, NULL, NULL);
			if (c >= 0)
				close(c);
		}
	}
	if (argc == 3 && !strcmp(argv[1], "hog")) {
		long mb = atol(argv[2]);
		for (long i = 0; i < mb; i++) {
			char *p = malloc(1 << 20);
			if (!p)
				return 1;
			memset(p, 1, 1 << 20);
		}
		printf("hogged %ld MB\n", mb);
		fflush(stdout);
		pause();
	}
	if (argc == 3 && !strcmp(argv[1], "echo")) {
		signal(SIGCHLD, SIG_IGN); /* no zombies */
		int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
		if (bind(s, (struct sockaddr *)&addr, sizeof(addr)) || listen(s, 64)) {
			perror("listen");
			return 1;
		}
		printf("echoing\n");
		fflush(stdout);
		for (;;) {
			int c = accept(s, NULL, NULL);
			if (c < 0 || fork() != 0) {
				close(c);
				continue;
			}
			char buf[65536];
			ssize_t n;
			while ((n = read(c, buf, sizeof(buf))) > 0)
				for (ssize_t done = 0, w; done < n; done += w)
					if ((w = write(c, buf + done, n - done)) <= 0)
						_exit(1);
			_exit(n == 0 ? 0 : 1); /* the end of its input: closing ends the echo */
		}
	}
	fprintf(stderr, "usage: service_probe listen PORT DELAY_MS | hog MB | echo PORT\n");
	return 2;
}
