// ringbid-auction: matches waiting calls to the best available agents (DESIGN §3).
#include <stdio.h>
#include <stdlib.h>

#include "auction_link.h"
#include "rb_bus.h"
#include "rb_config.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_svc.h"

static const char usage[] =
        "usage: ringbid-auction [--help] [--version]\n"
        "\n"
        "Matches every waiting call to the best available eligible agent and tells the broker.\n"
        "Its state is soft: it is rebuilt from presence's agent snapshot and the broker's\n"
        "waiting calls whenever a link comes up. Several presence instances may connect at\n"
        "once, each holding some agents' sessions.\n"
        "\n"
        "Environment (also read from $RINGBID_HOME/env):\n"
        "  RINGBID_AUCTION_URL         listen for presence (default tcp://127.0.0.1:<base+4>)\n"
        "  RINGBID_BROKER_AUCTION_URL  dial the broker (default tcp://127.0.0.1:<base+2>)\n"
        "  RINGBID_AUCTION_HTTP        admin HTTP host:port (default 127.0.0.1:<base+82>)\n"
        "  RINGBID_PORT_BASE           port base for the defaults (default 7100)\n"
        "  RINGBID_SERVICE_TOKEN[_FILE] shared service token\n"
        "  RINGBID_LOG_LEVEL           debug|info|warn|error (default info)\n";

typedef struct server {
	rb_svc svc;
	auction *auction;
	rb_bus *presence; // listens: every presence instance dials in (polyamorous)
	rb_bus *broker;   // dials the broker
} server;

static int send_on_link(void *arg, auction_link_id link, nng_msg *msg)
{
	server *s = arg;
	rb_bus *bus = link == AUCTION_LINK_PRESENCE ? s->presence : s->broker;
	if (!bus) {
		nng_msg_free(msg);
		return RB_ECLOSED;
	}
	return rb_bus_send(bus, msg);
}

static void on_recv(rb_bus *bus, nng_msg *msg, void *arg)
{
	server *s = arg;
	if (bus == s->presence) {
		uint32_t pipe = (uint32_t)nng_pipe_id(nng_msg_get_pipe(msg));
		auction_receive_from(s->auction, AUCTION_LINK_PRESENCE, pipe, nng_msg_body(msg),
		                     nng_msg_len(msg));
	} else {
		auction_receive(s->auction, AUCTION_LINK_BROKER, nng_msg_body(msg),
		                nng_msg_len(msg));
	}
	nng_msg_free(msg);
}

static void on_pipe(rb_bus *bus, nng_pipe pipe, bool added, void *arg)
{
	server *s = arg;
	if (bus == s->presence)
		auction_peer_event(s->auction, AUCTION_LINK_PRESENCE, (uint32_t)nng_pipe_id(pipe),
		                   added);
	else
		auction_link_event(s->auction, AUCTION_LINK_BROKER, rb_bus_peers(bus) > 0);
	rb_http_set_ready(s->svc.http, auction_ready(s->auction));
}

static void on_janitor(rb_svc *svc, void *arg)
{
	(void)svc;
	server *s = arg;
	auction_janitor(s->auction);
	rb_http_set_ready(s->svc.http, auction_ready(s->auction));
}

// Nothing of the auction needs to reach a disk: closing the links is the whole drain.
static void on_stop(rb_svc *svc, void *arg)
{
	server *s = arg;
	rb_bus_free(s->presence);
	rb_bus_free(s->broker);
	s->presence = NULL;
	s->broker = NULL;
	rb_http_set_ready(svc->http, false);
	rb_svc_close_handles(svc);
}

static int open_bus(server *s, const char *name, rb_bus_kind kind, rb_bus **out)
{
	rb_bus_opts o = {
	        .recv_max = RB_PB_MAX_SERVICE,
	        .name = name,
	        .batch = true, // service links: see docs/delivery.md, "Batches"
	};
	int rc = rb_bus_new(&s->svc.loop, kind, &o, out);
	if (rc != 0) {
		rb_error("cannot open the %s socket: %s", name, rb_err_str(rc));
		return rc;
	}
	rb_bus_on_recv(*out, on_recv, s);
	rb_bus_on_pipe(*out, on_pipe, s);
	return 0;
}

int main(int argc, char **argv)
{
	static server s;
	s.svc.on_stop = on_stop;
	s.svc.on_janitor = on_janitor;
	s.svc.janitor_ms = 1000;
	s.svc.arg = &s;
	int rc = rb_svc_init(&s.svc, "auction", argc, argv, usage, "RINGBID_AUCTION_HTTP",
	                     RB_PORT_AUCTION_HTTP);
	if (rc != 0)
		return rc == RB_EINVAL ? 2 : 1;

	char presence_url[256], broker_url[256];
	rc = rb_config_url("RINGBID_AUCTION_URL", RB_PORT_AUCTION_PRESENCE, presence_url,
	                   sizeof presence_url);
	if (rc == 0)
		rc = rb_config_url("RINGBID_BROKER_AUCTION_URL", RB_PORT_BROKER_AUCTION, broker_url,
		                   sizeof broker_url);
	if (rc != 0) {
		rb_error("bad link URL: %s", rb_err_str(rc));
		goto fail;
	}
	rc = auction_new(s.svc.token, send_on_link, &s, &s.auction);
	if (rc != 0) {
		rb_error("cannot create the auction: %s", rb_err_str(rc));
		goto fail;
	}
	if ((rc = open_bus(&s, "auction-presence", RB_BUS_PAIR_POLY, &s.presence)) != 0 ||
	    (rc = open_bus(&s, "auction-broker", RB_BUS_PAIR, &s.broker)) != 0)
		goto fail;
	rc = rb_bus_listen(s.presence, presence_url);
	if (rc != 0) {
		rb_error("cannot listen for presence on %s: %s", presence_url, rb_err_str(rc));
		goto fail;
	}
	rc = rb_bus_dial(s.broker, broker_url);
	if (rc != 0) {
		rb_error("cannot dial the broker at %s: %s", broker_url, rb_err_str(rc));
		goto fail;
	}
	rb_info("listening for presence on %s, dialing the broker at %s", presence_url, broker_url);
	rb_http_set_ready(s.svc.http, false);
	rc = rb_svc_run(&s.svc);
	if (rc != 0) {
		on_stop(&s.svc, &s);
		uv_run(&s.svc.loop, UV_RUN_DEFAULT);
	}
	auction_free(s.auction);
	rb_svc_fini(&s.svc);
	return rc == 0 ? 0 : 1;

fail:
	rb_bus_free(s.presence);
	rb_bus_free(s.broker);
	s.presence = s.broker = NULL;
	rb_svc_close_handles(&s.svc);
	uv_run(&s.svc.loop, UV_RUN_DEFAULT);
	auction_free(s.auction);
	rb_svc_fini(&s.svc);
	return 1;
}
