// ringbid certs: TLS certificates for the agent link.
#ifndef CLI_CERTS_H
#define CLI_CERTS_H

// `ringbid certs dev ...`: argv holds the words after "certs". Writes a private CA and
// presence's certificate and key. Returns a CLI_EXIT_* status (the reason printed).
int cli_cmd_certs(int argc, char **argv);

#endif
