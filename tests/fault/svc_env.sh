#!/bin/sh
# Starts one ringbid service with the settings the fault tests give that service alone.
#
# `ringbid up` runs each service under RINGBID_SERVICE_WRAPPER; the fault tests set it to
# "/bin/sh tests/fault/svc_env.sh", so this script gets the service's program as its one
# argument. RINGBID_FAULT_<NAME>_ENV (NAME: BROKER, AUCTION, PRESENCE, BILLING) holds
# space-separated KEY=VALUE words for that service only: a link that goes through one of the
# tests' proxies, or a journal on a small disk. The script then execs the service, so the pid
# that `ringbid up` recorded is the service's own.
set -eu
bin=$1
name=${bin##*/ringbid-}
var="RINGBID_FAULT_$(printf '%s' "$name" | tr 'a-z' 'A-Z')_ENV"
eval "words=\${$var:-}"
for kv in $words; do
	case $kv in
	[A-Z]*=*) export "$kv" ;;
	*) echo "svc_env.sh: ignoring '$kv' in $var" >&2 ;;
	esac
done
exec "$bin"
