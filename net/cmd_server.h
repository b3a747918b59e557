/*
 * cmd_server: the commands about the server and the connection rather than one key: PING,
 * ECHO, SELECT, AUTH, HELLO, QUIT, CLIENT, INFO, CONFIG, COMMAND, SHUTDOWN, DEBUG, and the
 * whole-keyspace commands DBSIZE, FLUSHALL/FLUSHDB, KEYS, SCAN, RANDOMKEY, which check their
 * arguments here and fan out to the shards through net/dispatch.h.
 */
#ifndef RK_CMD_SERVER_H
#define RK_CMD_SERVER_H

#include "net/server.h"

struct req;
#define SRV_CMD(name) void name(struct conn *c, struct req *req)
SRV_CMD(srv_dbsize);
SRV_CMD(srv_flushall);
SRV_CMD(srv_keys);
SRV_CMD(srv_scan);
SRV_CMD(srv_randomkey);
SRV_CMD(srv_ping);
SRV_CMD(srv_echo);
SRV_CMD(srv_select);
SRV_CMD(srv_auth);
SRV_CMD(srv_hello);
SRV_CMD(srv_quit);
SRV_CMD(srv_client);
SRV_CMD(srv_info);
SRV_CMD(srv_config);
SRV_CMD(srv_command);
SRV_CMD(srv_shutdown);
SRV_CMD(srv_debug);
SRV_CMD(srv_wait);

/* The INFO text for the given sections (NULL: the default set), appended to b. */
void srv_info_text(struct buf *b, struct worker *w, int argc, const struct arg *argv);

#endif
