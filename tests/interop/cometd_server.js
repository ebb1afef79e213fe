// Test-only CometD server for the Bayeux client interop tests: the CometD project's
// own Node server with its acknowledgement extension, on 127.0.0.1, port 0.
//
// Protocol (one JSON object per line):
// - stdout first line: {"event":"listening","port":N}
// - stdin commands, each answered by one stdout line {"reply":CMD,...}:
//     publish CHANNEL JSON   publish JSON on CHANNEL (server-side, no sender)
//     drop                   session.disconnect() on every session -> {"count":N}
//     sessions               -> {"count":N} live sessions
//     subscribers CHANNEL    -> {"count":N} sessions subscribed to CHANNEL
// - unprompted stdout lines: {"event":"sessionAdded"}, {"event":"sessionRemoved","timeout":bool},
//   {"event":"connectExpired"} (a parked connect answered at the timeout, no events)
// Options come from the environment: COMETD_TIMEOUT, COMETD_MAX_INTERVAL (ms).
// The process exits when stdin closes, so a test that dies takes the server with it.
'use strict';

const http = require('http');
const readline = require('readline');
const cometd = require('cometd-nodejs-server');
const { AcknowledgedMessagesExtension } = require('cometd-nodejs-server/ack-extension');

const options = {
    timeout: Number(process.env.COMETD_TIMEOUT || 2000),
    maxInterval: Number(process.env.COMETD_MAX_INTERVAL || 5000),
};
const server = cometd.createCometDServer(options);
server.addExtension(new AcknowledgedMessagesExtension());

const sessions = new Map();
function out(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}
server.addListener('sessionAdded', session => {
    sessions.set(session.id, session);
    // A parked /meta/connect that reached the server timeout without events.
    session.addListener('resumed', (s, message, expired) => {
        if (expired) {
            out({ event: 'connectExpired' });
        }
    });
    out({ event: 'sessionAdded' });
});
server.addListener('sessionRemoved', (session, timeout) => {
    sessions.delete(session.id);
    out({ event: 'sessionRemoved', timeout: !!timeout });
});

function handle(line) {
    const trimmed = line.trim();
    if (!trimmed) {
        return;
    }
    const space = trimmed.indexOf(' ');
    const cmd = space < 0 ? trimmed : trimmed.slice(0, space);
    const rest = space < 0 ? '' : trimmed.slice(space + 1).trim();
    try {
        switch (cmd) {
            case 'publish': {
                const sp = rest.indexOf(' ');
                const channel = rest.slice(0, sp);
                const data = JSON.parse(rest.slice(sp + 1));
                server.createServerChannel(channel).publish(null, data, () => {
                    out({ reply: 'publish' });
                });
                break;
            }
            case 'drop': {
                const all = Array.from(sessions.values());
                all.forEach(s => s.disconnect());
                out({ reply: 'drop', count: all.length });
                break;
            }
            case 'sessions':
                out({ reply: 'sessions', count: sessions.size });
                break;
            case 'subscribers': {
                const channel = server.getServerChannel(rest);
                out({ reply: 'subscribers', count: channel ? channel.subscribers.length : 0 });
                break;
            }
            default:
                out({ reply: cmd, error: 'unknown command' });
        }
    } catch (e) {
        out({ reply: cmd, error: String(e) });
    }
}

const httpServer = http.createServer(server.handle);
httpServer.listen(0, '127.0.0.1', () => {
    out({ event: 'listening', port: httpServer.address().port });
    const rl = readline.createInterface({ input: process.stdin });
    rl.on('line', handle);
    rl.on('close', () => {
        server.close();
        httpServer.close();
        process.exit(0);
    });
});
