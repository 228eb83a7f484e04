/* What a service does to report through syslog(3) (test_service_ops.py):
 *   syslog_probe COUNT TEXT   COUNT messages TEXT N to /dev/log as auth.warning, tagged "probe"
 */
#include <stdlib.h>
#include <syslog.h>

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	openlog("probe", LOG_PID, LOG_AUTH);
	for (int i = 0; i < atoi(argv[1]); i++)
		syslog(LOG_WARNING, "%s %d", argv[2], i);
	return 0;
}
