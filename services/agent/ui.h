// What the agent sees and types: human-readable lines or JSON lines, and the typed commands.
#ifndef AGENT_UI_H
#define AGENT_UI_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "client.h"

typedef enum {
	AGENT_UI_HUMAN = 0, // sentences for a person at a terminal
	AGENT_UI_JSON,      // one JSON object per line, for scripts and tests
} agent_ui_mode;

typedef enum {
	AGENT_CMD_EMPTY = 0, // a blank line
	AGENT_CMD_READY,
	AGENT_CMD_PAUSE,
	AGENT_CMD_ACCEPT,
	AGENT_CMD_DECLINE,
	AGENT_CMD_END,
	AGENT_CMD_STATUS,
	AGENT_CMD_LOGOUT,
	AGENT_CMD_QUIT,
	AGENT_CMD_HELP,
	AGENT_CMD_EARNINGS,
} agent_cmd;

// Words after the command: only 'end' takes any ('sale', 'resolved', in any order).
typedef struct agent_cmd_args {
	bool sale;
	bool resolved;
} agent_cmd_args;

typedef struct agent_ui {
	agent_ui_mode mode;
	uint64_t agent_id;
	agent_offer_policy policy;
	FILE *out;
} agent_ui;

// Prepares ui (embedded object) to write to out, which stays the caller's.
void agent_ui_init(agent_ui *ui, agent_ui_mode mode, uint64_t agent_id, agent_offer_policy policy,
                   FILE *out);
void agent_ui_fini(agent_ui *ui);

// Formats ev as one JSON object (no newline) with "ts" (ts_us as UTC ISO 8601), "event",
// "agent_id" and the event's fields. On success *out is the caller's (free()). Returns 0,
// RB_EINVAL (unknown event) or RB_ENOMEM.
int agent_ui_json(const agent_event *ev, uint64_t agent_id, uint64_t ts_us, char **out);
// Formats ev as one human-readable line (no newline) into out. Returns 0 or RB_EINVAL.
int agent_ui_text(const agent_event *ev, uint64_t agent_id, agent_offer_policy policy, char *out,
                  size_t n);
// Writes ev in the ui's mode, one flushed line.
void agent_ui_event(agent_ui *ui, const agent_event *ev);
// Writes a note for a person (human mode only; JSON output stays events only).
void agent_ui_note(agent_ui *ui, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Parses one typed line (surrounding blanks ignored, case-insensitive). args (may be NULL) gets
// the marks of 'end'. Returns 0, or RB_EINVAL for an unknown command or a word it does not take.
int agent_ui_parse(const char *line, agent_cmd *out, agent_cmd_args *args);
// Parses and runs one typed line against c, reporting problems on the ui. Returns 0 or the
// code of the refused command (also shown).
int agent_ui_command(agent_ui *ui, agent_client *c, const char *line);
// Shows the agent's state, the offer and the call time (the 'status' command).
void agent_ui_status(agent_ui *ui, const agent_client *c);
// Shows the running call's time, if there is a call (human mode; called every few seconds).
void agent_ui_call_time(agent_ui *ui, const agent_client *c);

// "1:05", "12:00", "1:02:03": a talk time for people.
char *agent_ui_duration(uint64_t ms, char *out, size_t n);

#endif
