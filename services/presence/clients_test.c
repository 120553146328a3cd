// Unit tests of the agent link's address policy: plain TCP on loopback only.
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "clients.h"

static void loopback_addresses_allowed(void **state)
{
	(void)state;
	assert_true(presence_clients_loopback("tcp://127.0.0.1:7105"));
	assert_true(presence_clients_loopback("tcp://127.3.4.5:7105"));
	assert_true(presence_clients_loopback("tcp://[::1]:7105"));
	assert_true(presence_clients_loopback("tcp://localhost:7105"));
	assert_true(presence_clients_loopback("ipc:///tmp/presence.sock"));
	assert_true(presence_clients_loopback("inproc://agents"));
}

static void real_networks_refused(void **state)
{
	(void)state;
	assert_false(presence_clients_loopback("tcp://0.0.0.0:7105"));
	assert_false(presence_clients_loopback("tcp://10.0.0.5:7105"));
	assert_false(presence_clients_loopback("tcp://[::]:7105"));
	assert_false(presence_clients_loopback("tcp://presence.example.com:7105"));
	// A name that merely starts like a loopback one is a real network name.
	assert_false(presence_clients_loopback("tcp://localhost.example.com:7105"));
	assert_false(presence_clients_loopback("tcp://1270.0.0.1:7105"));
	assert_false(presence_clients_loopback("tls+tcp://127.0.0.1:7105"));
	assert_false(presence_clients_loopback(""));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(loopback_addresses_allowed),
	        cmocka_unit_test(real_networks_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
