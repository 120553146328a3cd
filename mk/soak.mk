# Fault tests, long form (issue 7): every service and PostgreSQL SIGKILLed under load for
# several rounds with a few hundred simulated agents, longer link cuts, a one-minute laptop
# sleep, a longer lock on billing.cdrs, the journal's disk full. `make check` runs the short
# form (tests/integration/test_faults.py); docs/reliability.md lists each fault and result.
#
#   make soak                        the long form (about 10 minutes, as root: it mounts a tmpfs)
#   make soak SOAK_TESTS=kill        only tests whose name contains "kill"
#   RINGBID_TEST_SEED=N make soak    repeat a run's seeds

SOAK_TESTS   ?=
SOAK_TIMEOUT ?= 3600

.PHONY: soak

soak: deps
	@$(MAKE) --no-print-directory all
	@RINGBID_SOAK=1 timeout -k 20 $(SOAK_TIMEOUT) python3 -u tests/fault/test_faults.py $(SOAK_TESTS)
