// ringbid certs dev: a private certificate authority and presence's TLS certificate.
//
// The agent link runs over tls+tcp:// (nng's TLS transport on mbedTLS 2.28, TLS 1.2). A demo,
// the tests and a small pilot need certificates without an outside CA: this writes an ECDSA
// P-256 CA and a server certificate it signs, both with mbedTLS (already under nng, so no new
// library). ECDSA, not RSA: mbedTLS 2.28 is markedly slower with RSA handshakes, and a floor
// of agents reconnecting after a network blip handshakes all at once.
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

#include "certs.h"
#include "cli.h"
#include "rb_err.h"

#define CERTS_PEM_MAX   8192
#define CERTS_NAMES_MAX 16
#define CERTS_NAME_MAX  253 // a DNS name
#define CERTS_DAYS_MAX  3650

// Names presence is reached by in the local stack, docker-compose and Kubernetes. mbedTLS 2.28
// compares a client's expected server name with dNSName entries only (no iPAddress), so an
// agent dialling 127.0.0.1 sets RINGBID_AGENT_TLS_SERVER_NAME=localhost.
static const char *const default_names[] = {"localhost", "presence", "ringbid-presence"};

typedef struct certs_rng {
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
} certs_rng;

static int rng_init(certs_rng *r)
{
	static const unsigned char pers[] = "ringbid certs dev";
	mbedtls_entropy_init(&r->entropy);
	mbedtls_ctr_drbg_init(&r->drbg);
	return mbedtls_ctr_drbg_seed(&r->drbg, mbedtls_entropy_func, &r->entropy, pers,
	                             sizeof pers - 1) == 0
	               ? 0
	               : RB_EIO;
}

static void rng_fini(certs_rng *r)
{
	mbedtls_ctr_drbg_free(&r->drbg);
	mbedtls_entropy_free(&r->entropy);
}

static int gen_key(certs_rng *r, mbedtls_pk_context *pk)
{
	mbedtls_pk_init(pk);
	if (mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)) != 0)
		return RB_ENOMEM;
	if (mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*pk),
	                        mbedtls_ctr_drbg_random, &r->drbg) != 0)
		return RB_EIO;
	return 0;
}

// Writes the subjectAltName extension value: SEQUENCE OF dNSName. asn1write fills the buffer
// from its end backwards, so the names go in reverse to keep their order.
static int san_der(const char *const *names, size_t n, unsigned char *buf, size_t size,
                   const unsigned char **out, size_t *outlen)
{
	unsigned char *p = buf + size;
	size_t len = 0;
	int w;

	for (size_t i = n; i-- > 0;) {
		size_t nl = strlen(names[i]);
		size_t one = 0;
		if ((w = mbedtls_asn1_write_raw_buffer(&p, buf, (const unsigned char *)names[i],
		                                       nl)) < 0)
			return RB_ETOOBIG;
		one += (size_t)w;
		if ((w = mbedtls_asn1_write_len(&p, buf, one)) < 0)
			return RB_ETOOBIG;
		one += (size_t)w;
		if ((w = mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2)) < 0)
			return RB_ETOOBIG;
		len += one + (size_t)w;
	}
	if ((w = mbedtls_asn1_write_len(&p, buf, len)) < 0)
		return RB_ETOOBIG;
	len += (size_t)w;
	if ((w = mbedtls_asn1_write_tag(&p, buf,
	                                MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE)) < 0)
		return RB_ETOOBIG;
	len += (size_t)w;
	*out = p;
	*outlen = len;
	return 0;
}

// "YYYYMMDDhhmmss" in UTC, the form mbedtls_x509write_crt_set_validity takes.
static void x509_time(time_t t, char out[16])
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, 16, "%Y%m%d%H%M%S", &tm);
}

typedef struct cert_spec {
	const char *subject;
	const char *issuer;
	mbedtls_pk_context *key;        // the certificate's own key
	mbedtls_pk_context *issuer_key; // the key that signs it
	bool ca;
	int days;
	const char *const *names; // dNSNames (server certificates)
	size_t nnames;
} cert_spec;

static int make_cert(certs_rng *r, const cert_spec *s, unsigned char *pem, size_t pemlen)
{
	mbedtls_x509write_cert crt;
	mbedtls_mpi serial;
	unsigned char serial_bytes[16], san[4096];
	char from[16], until[16];
	time_t now = time(NULL);
	int rv = 0;

	mbedtls_x509write_crt_init(&crt);
	mbedtls_mpi_init(&serial);
	// A positive 127-bit random serial: unique enough that re-issued certificates never clash.
	if (mbedtls_ctr_drbg_random(&r->drbg, serial_bytes, sizeof serial_bytes) != 0)
		rv = RB_EIO;
	serial_bytes[0] &= 0x7f;
	if (rv == 0 && mbedtls_mpi_read_binary(&serial, serial_bytes, sizeof serial_bytes) != 0)
		rv = RB_ENOMEM;
	// Valid from an hour ago: a client whose clock is a little behind still accepts it.
	x509_time(now - 3600, from);
	x509_time(now + (time_t)s->days * 86400, until);

	mbedtls_x509write_crt_set_version(&crt, MBEDTLS_X509_CRT_VERSION_3);
	mbedtls_x509write_crt_set_md_alg(&crt, MBEDTLS_MD_SHA256);
	mbedtls_x509write_crt_set_subject_key(&crt, s->key);
	mbedtls_x509write_crt_set_issuer_key(&crt, s->issuer_key);
	if (rv == 0 && (mbedtls_x509write_crt_set_subject_name(&crt, s->subject) != 0 ||
	                mbedtls_x509write_crt_set_issuer_name(&crt, s->issuer) != 0 ||
	                mbedtls_x509write_crt_set_serial(&crt, &serial) != 0 ||
	                mbedtls_x509write_crt_set_validity(&crt, from, until) != 0 ||
	                mbedtls_x509write_crt_set_basic_constraints(&crt, s->ca ? 1 : 0,
	                                                            s->ca ? 0 : -1) != 0 ||
	                mbedtls_x509write_crt_set_subject_key_identifier(&crt) != 0 ||
	                mbedtls_x509write_crt_set_authority_key_identifier(&crt) != 0))
		rv = RB_EINVAL;
	if (rv == 0) {
		unsigned int usage =
		        s->ca ? MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN
		              : MBEDTLS_X509_KU_DIGITAL_SIGNATURE | MBEDTLS_X509_KU_KEY_AGREEMENT;
		if (mbedtls_x509write_crt_set_key_usage(&crt, usage) != 0)
			rv = RB_EINVAL;
	}
	if (rv == 0 && s->nnames > 0) {
		const unsigned char *der;
		size_t derlen;
		rv = san_der(s->names, s->nnames, san, sizeof san, &der, &derlen);
		if (rv == 0 &&
		    mbedtls_x509write_crt_set_extension(
		            &crt, MBEDTLS_OID_SUBJECT_ALT_NAME,
		            MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0, der, derlen) != 0)
			rv = RB_EINVAL;
	}
	if (rv == 0 &&
	    mbedtls_x509write_crt_pem(&crt, pem, pemlen, mbedtls_ctr_drbg_random, &r->drbg) != 0)
		rv = RB_EIO;
	mbedtls_mpi_free(&serial);
	mbedtls_x509write_crt_free(&crt);
	return rv;
}

// Writes text to dir/name with mode, replacing the file atomically (temp file + rename), so a
// presence reading its certificate never sees half a file.
static int write_file(const char *dir, const char *name, const unsigned char *text, unsigned mode)
{
	char path[PATH_MAX], tmp[PATH_MAX];
	size_t len = strlen((const char *)text);

	if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path ||
	    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name) >= (int)sizeof tmp)
		return RB_ETOOBIG;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, (mode_t)mode);
	if (fd < 0)
		return RB_EIO;
	bool ok = fchmod(fd, (mode_t)mode) == 0 && write(fd, text, len) == (ssize_t)len &&
	          fsync(fd) == 0;
	if (close(fd) != 0)
		ok = false;
	if (!ok || rename(tmp, path) != 0) {
		unlink(tmp);
		return RB_EIO;
	}
	return 0;
}

// A DNS name or "localhost": letters, digits, '-' and '.', at most 253 characters.
static bool valid_dns_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > CERTS_NAME_MAX || s[0] == '.' || s[0] == '-')
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.'))
			return false;
	}
	return true;
}

static bool exists(const char *dir, const char *name)
{
	char path[PATH_MAX];
	struct stat st;
	if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
		return false;
	return stat(path, &st) == 0;
}

static const char usage_dev[] =
        "usage: ringbid certs dev [--dir DIR] [--names NAME,...] [--days N] [--force]\n"
        "\n"
        "Makes a private certificate authority and a certificate for presence's agent port\n"
        "(tls+tcp://), ECDSA P-256, for a demo, the tests or a pilot. Writes into DIR\n"
        "(default $RINGBID_HOME/certs):\n"
        "  ca.crt          the CA: give it to agents' clients (RINGBID_AGENT_TLS_CA_FILE)\n"
        "  ca.key          the CA's key: keep it private (mode 0600)\n"
        "  presence.crt    presence's certificate (RINGBID_PRESENCE_TLS_CERT)\n"
        "  presence.key    its key (RINGBID_PRESENCE_TLS_KEY, mode 0600)\n"
        "\n"
        "  --names   DNS names presence is reached by, besides localhost, presence and\n"
        "            ringbid-presence\n"
        "  --days    validity in days (default 365, at most 3650)\n"
        "  --force   replace certificates already in DIR (agents must get the new ca.crt)\n"
        "\n"
        "A production floor uses certificates from the BPO's own CA instead.\n";

static int certs_dev(int argc, char **argv)
{
	cli_opt opts[] = {
	        {.name = "dir", .has_arg = true},
	        {.name = "names", .has_arg = true},
	        {.name = "days", .has_arg = true},
	        {.name = "force"},
	};
	size_t npos = 0;
	char err[256];
	int rv = cli_args_parse(argc, argv, opts, sizeof opts / sizeof opts[0], NULL, 0, &npos, err,
	                        sizeof err);
	if (rv == CLI_ARGS_HELP) {
		fputs(usage_dev, stdout);
		return CLI_EXIT_OK;
	}
	if (rv != 0)
		return cli_usage_error("certs dev", "%s", err);

	char dir[PATH_MAX];
	const char *dir_opt = cli_opt_get(opts, 4, "dir");
	if (dir_opt != NULL) {
		if (strlen(dir_opt) == 0 || strlen(dir_opt) >= sizeof dir)
			return cli_usage_error("certs dev", "--dir: not a usable directory name");
		strcpy(dir, dir_opt);
	} else {
		char home[PATH_MAX];
		if (cli_home_abs(home, sizeof home) != 0 ||
		    snprintf(dir, sizeof dir, "%s/certs", home) >= (int)sizeof dir)
			return cli_fail("cannot tell where RINGBID_HOME is");
	}

	long long days = 365;
	const char *days_opt = cli_opt_get(opts, 4, "days");
	if (days_opt != NULL && cli_parse_int(days_opt, 1, CERTS_DAYS_MAX, &days) != 0)
		return cli_usage_error("certs dev", "--days must be a whole number from 1 to %d",
		                       CERTS_DAYS_MAX);

	const char *names[CERTS_NAMES_MAX];
	size_t nnames = 0;
	for (size_t i = 0; i < sizeof default_names / sizeof default_names[0]; i++)
		names[nnames++] = default_names[i];
	char **extra = NULL;
	size_t nextra = 0;
	const char *names_opt = cli_opt_get(opts, 4, "names");
	if (names_opt != NULL) {
		if (cli_list_parse(names_opt, ',', &extra, &nextra, err, sizeof err) != 0)
			return cli_usage_error("certs dev", "--names: %s", err);
		for (size_t i = 0; i < nextra; i++) {
			if (!valid_dns_name(extra[i])) {
				rv = cli_usage_error("certs dev",
				                     "--names: '%.80s' is not a DNS name",
				                     extra[i]);
				goto out_names;
			}
			if (nnames == CERTS_NAMES_MAX) {
				rv = cli_usage_error("certs dev", "--names: at most %d names",
				                     CERTS_NAMES_MAX - 3);
				goto out_names;
			}
			names[nnames++] = extra[i];
		}
	}

	if (cli_opt_get(opts, 4, "force") == NULL &&
	    (exists(dir, "ca.crt") || exists(dir, "presence.crt"))) {
		rv = cli_fail("%s already holds certificates; --force replaces them (agents then "
		              "need the new ca.crt)",
		              dir);
		goto out_names;
	}
	if (cli_mkdirs(dir, 0755) != 0) {
		rv = cli_fail("cannot create %s: %s", dir, strerror(errno));
		goto out_names;
	}

	certs_rng r;
	mbedtls_pk_context ca_key, srv_key;
	static unsigned char pem[CERTS_PEM_MAX];
	rv = rng_init(&r);
	mbedtls_pk_init(&ca_key);
	mbedtls_pk_init(&srv_key);
	if (rv == 0)
		rv = gen_key(&r, &ca_key);
	if (rv == 0)
		rv = gen_key(&r, &srv_key);
	const char *ca_name = "CN=ringbid development CA,O=ringbid";
	cert_spec ca = {.subject = ca_name,
	                .issuer = ca_name,
	                .key = &ca_key,
	                .issuer_key = &ca_key,
	                .ca = true,
	                .days = (int)days};
	cert_spec srv = {.subject = "CN=presence,O=ringbid",
	                 .issuer = ca_name,
	                 .key = &srv_key,
	                 .issuer_key = &ca_key,
	                 .days = (int)days,
	                 .names = names,
	                 .nnames = nnames};
	// Keys first, each 0600: a crash part way leaves no certificate without its key.
	if (rv == 0)
		rv = mbedtls_pk_write_key_pem(&ca_key, pem, sizeof pem) == 0 ? 0 : RB_EIO;
	if (rv == 0)
		rv = write_file(dir, "ca.key", pem, 0600);
	if (rv == 0)
		rv = mbedtls_pk_write_key_pem(&srv_key, pem, sizeof pem) == 0 ? 0 : RB_EIO;
	if (rv == 0)
		rv = write_file(dir, "presence.key", pem, 0600);
	if (rv == 0)
		rv = make_cert(&r, &ca, pem, sizeof pem);
	if (rv == 0)
		rv = write_file(dir, "ca.crt", pem, 0644);
	if (rv == 0)
		rv = make_cert(&r, &srv, pem, sizeof pem);
	if (rv == 0)
		rv = write_file(dir, "presence.crt", pem, 0644);
	memset(pem, 0, sizeof pem);
	mbedtls_pk_free(&srv_key);
	mbedtls_pk_free(&ca_key);
	rng_fini(&r);
	if (rv != 0) {
		rv = cli_fail("cannot write the certificates in %s: %s", dir, rb_err_str(rv));
		goto out_names;
	}
	printf("certificates in %s (valid %lld days) for:", dir, days);
	for (size_t i = 0; i < nnames; i++)
		printf(" %s", names[i]);
	printf("\n"
	       "presence:  RINGBID_PRESENCE_URL=tls+tcp://0.0.0.0:7105\n"
	       "           RINGBID_PRESENCE_TLS_CERT=%s/presence.crt\n"
	       "           RINGBID_PRESENCE_TLS_KEY=%s/presence.key\n"
	       "agents:    RINGBID_AGENT_TLS_CA_FILE=%s/ca.crt\n",
	       dir, dir, dir);
	rv = CLI_EXIT_OK;
out_names:
	cli_list_free(extra, nextra);
	return rv;
}

int cli_cmd_certs(int argc, char **argv)
{
	if (argc >= 1 && strcmp(argv[0], "dev") == 0)
		return certs_dev(argc - 1, argv + 1);
	if (argc >= 1 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0)) {
		fputs(usage_dev, stdout);
		return CLI_EXIT_OK;
	}
	return cli_usage_error("certs", "the only subcommand is 'dev' (see 'ringbid certs dev "
	                                "--help')");
}
