#!/usr/bin/env bash
# Finds promtool (Prometheus's checker) for `make check`, fetching only that binary if needed.
#
#   scripts/promtool.sh                          prints promtool's path
#   scripts/promtool.sh check metrics < m.txt    runs it with these arguments
#
# A promtool on PATH is used as it is. Otherwise Debian 12's prometheus package is downloaded
# (`apt-get download`, no installation, so no server and no service) into build/promtool/ and
# only usr/bin/promtool is unpacked from it; later runs reuse that copy.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/build/promtool
cached=$dir/usr/bin/promtool

find_promtool() {
	if command -v promtool >/dev/null 2>&1; then
		command -v promtool
		return 0
	fi
	if [ -x "$cached" ]; then
		echo "$cached"
		return 0
	fi
	return 1
}

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	else
		sudo "$@"
	fi
}

fetch() {
	local deb
	mkdir -p "$dir"
	rm -f "$dir"/prometheus_*.deb
	# The package lists may be missing (a fresh image) or stale (a superseded version is no
	# longer on the mirror): refresh them once and try again.
	if ! (cd "$dir" && apt-get download -q prometheus) >&2; then
		echo "promtool.sh: refreshing the package lists" >&2
		as_root apt-get update -q >&2
		(cd "$dir" && apt-get download -q prometheus) >&2
	fi
	deb=$(ls "$dir"/prometheus_*.deb 2>/dev/null | head -n1)
	if [ -z "$deb" ]; then
		echo "promtool.sh: apt-get download prometheus gave no package" >&2
		return 1
	fi
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" ./usr/bin/promtool
	rm -f "$deb"
	chmod 0755 "$cached"
	"$cached" --version >/dev/null 2>&1 || {
		echo "promtool.sh: $cached does not run" >&2
		return 1
	}
}

if ! path=$(find_promtool); then
	fetch
	path=$cached
fi

if [ $# -eq 0 ]; then
	echo "$path"
else
	exec "$path" "$@"
fi
