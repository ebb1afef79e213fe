#!/usr/bin/env node
// Answers an inbound SMS through gws-sms-gateway: accept -> reply -> complete.
//
// The stubs are built at run time from the repository's proto (proto-loader), so there is
// nothing to generate. Every operation is sent with wait_for_outcome, so each step returns
// only once GWS's notification confirmed it, and the confirmed state is printed.
//
//   node inbound.js --user agent1 --password password1 --simulator http://127.0.0.1:PORT
//
// With --simulator (the demo's embedded GWS simulator; its URL is in the gateway's startup
// log) a customer's SMS is made to arrive first; without it, the agent's newest Invited
// session is answered.
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const { values: args } = parseArgs({
  options: {
    addr: { type: 'string', default: '127.0.0.1:50051' },
    user: { type: 'string' },
    password: { type: 'string' },
    simulator: { type: 'string' },
    timeout: { type: 'string', default: '15' },
  },
});
if (!args.user || !args.password) {
  console.error('usage: node inbound.js --user U --password P [--addr HOST:PORT] [--simulator URL]');
  process.exit(2);
}

const definition = protoLoader.loadSync(
  path.join(__dirname, '..', '..', 'proto', 'gws', 'sms', 'v1', 'sms_session.proto'),
  // Enums as their names, int64 as strings (no precision loss), defaults filled in.
  { keepCase: false, enums: String, longs: String, defaults: true, oneofs: true },
);
const { SmsSessionService } = grpc.loadPackageDefinition(definition).gws.sms.v1;
const client = new SmsSessionService(args.addr, grpc.credentials.createInsecure());

const metadata = new grpc.Metadata();
metadata.set('authorization',
  'Basic ' + Buffer.from(`${args.user}:${args.password}`).toString('base64'));

/** One unary call as a promise, with a deadline. */
function call(method, request) {
  const deadline = new Date(Date.now() + Number(args.timeout) * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

/** Prints what confirmed an operation; fails loudly if nothing did. */
function confirmed(step, resp) {
  const { status, event } = resp.outcome || {};
  if (status !== 'OUTCOME_STATUS_CONFIRMED') {
    throw new Error(`${step}: ${status}: accepted by GWS but not confirmed in time`);
  }
  const shown = event.stateChange
    ? event.stateChange.session.stateName
    : event.messageLog.messages.map((m) => `${m.type} ${JSON.stringify(m.text)}`).join(', ');
  console.log(`${step}: ${status} (${shown})`);
}

async function customerWrites(simulator, user, text) {
  const resp = await fetch(`${simulator.replace(/\/$/, '')}/simulator/agents/${user}/smssessions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ text }),
  });
  if (!resp.ok) throw new Error(`simulator answered HTTP ${resp.status}`);
  return (await resp.json()).id;
}

async function main() {
  if (args.simulator) {
    const id = await customerWrites(args.simulator, args.user, 'Hi, where is my parcel?');
    console.log(`a customer wrote: new session ${id}`);
  }
  const { sessions } = await call('ListSessions', {});
  const invited = sessions.filter((s) => s.state === 'SESSION_STATE_INVITED');
  if (invited.length === 0) {
    throw new Error('no Invited session: pass --simulator URL to make a customer write first');
  }
  const sessionId = invited[invited.length - 1].id;

  const { messages } = await call('GetTranscript', { sessionId });
  for (const m of messages) console.log(`  [${m.index}] ${m.sender ? m.sender.nickname : '?'}: ${m.text}`);

  confirmed('Accept', await call('Accept', { sessionId, nickname: 'Ann', waitForOutcome: true }));
  for (const text of ['Hello, this is Ann. Let me check.', 'It arrives tomorrow before noon.']) {
    confirmed('SendMessage', await call('SendMessage', { sessionId, text, waitForOutcome: true }));
  }
  confirmed('Complete', await call('Complete', { sessionId, waitForOutcome: true }));
}

main().then(
  () => client.close(),
  (err) => {
    // A gRPC error carries its code name; details (ErrorInfo, BadRequest) are in
    // err.metadata as grpc-status-details-bin.
    console.error(err.code !== undefined ? `error: ${grpc.status[err.code]}: ${err.details}` : `error: ${err.message}`);
    client.close();
    process.exit(1);
  },
);
