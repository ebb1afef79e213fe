#!/usr/bin/env python3
"""Answer an inbound SMS through gws-sms-gateway: accept -> reply -> complete.

Every operation is sent with wait_for_outcome, so each step returns only once GWS's
notification confirmed it (OUTCOME_STATUS_CONFIRMED), and prints the confirmed state.

    python inbound.py --user agent1 --password password1 --simulator http://127.0.0.1:PORT

With --simulator (the demo's embedded GWS simulator; its URL is in the gateway's startup
log) a customer's SMS is made to arrive first. Without it, the first Invited session of the
agent is answered.
"""

import argparse
import json
import sys
import urllib.request

import grpc

from client import describe_event, metadata, pb, pb_grpc, print_error


def customer_writes(simulator, user, text):
    """The simulator's control API: a customer's SMS arrives (a new Invited session)."""
    req = urllib.request.Request(
        f"{simulator.rstrip('/')}/simulator/agents/{user}/smssessions",
        data=json.dumps({"text": text}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)["id"]


def confirmed(step, resp):
    """Prints what confirmed an operation; fails loudly if nothing did."""
    status = pb.OutcomeStatus.Name(resp.outcome.status)
    if resp.outcome.status != pb.OUTCOME_STATUS_CONFIRMED:
        sys.exit(f"{step}: {status}: accepted by GWS but not confirmed in time")
    event = describe_event(resp.outcome.event)
    state = event.get("state_change", {}).get("session", {}).get("state_name")
    messages = event.get("message_log", {}).get("messages", [])
    shown = state or ", ".join(f"{m['type']} {m['text']!r}" for m in messages)
    print(f"{step}: {status} ({shown})")


def run(args, channel):
    stub = pb_grpc.SmsSessionServiceStub(channel)
    md = metadata(args)
    if args.simulator:
        created = customer_writes(args.simulator, args.user, "Hi, where is my parcel?")
        print(f"a customer wrote: new session {created}")
    sessions = stub.ListSessions(pb.ListSessionsRequest(), metadata=md, timeout=args.timeout)
    invited = [s for s in sessions.sessions if s.state == pb.SESSION_STATE_INVITED]
    if not invited:
        sys.exit("no Invited session: pass --simulator URL to make a customer write first")
    session = invited[-1].id

    transcript = stub.GetTranscript(
        pb.GetTranscriptRequest(session_id=session), metadata=md, timeout=args.timeout
    )
    for m in transcript.messages:
        print(f"  [{m.index}] {m.sender.nickname or '?'}: {m.text}")

    confirmed("Accept", stub.Accept(
        pb.AcceptRequest(session_id=session, nickname="Ann", wait_for_outcome=True),
        metadata=md, timeout=args.timeout))
    for text in ("Hello, this is Ann. Let me check.", "It arrives tomorrow before noon."):
        confirmed("SendMessage", stub.SendMessage(
            pb.SendMessageRequest(session_id=session, text=text, wait_for_outcome=True),
            metadata=md, timeout=args.timeout))
    confirmed("Complete", stub.Complete(
        pb.CompleteRequest(session_id=session, wait_for_outcome=True),
        metadata=md, timeout=args.timeout))


def main():
    p = argparse.ArgumentParser(description="accept -> reply -> complete an inbound SMS")
    p.add_argument("--addr", default="127.0.0.1:50051", help="gateway address (default %(default)s)")
    p.add_argument("--user", required=True, help="agent user name")
    p.add_argument("--password", required=True, help="agent password")
    p.add_argument("--simulator", help="the demo simulator's URL: make a customer write first")
    p.add_argument("--timeout", type=float, default=15.0, help="deadline of each call, seconds")
    args = p.parse_args()
    with grpc.insecure_channel(args.addr) as channel:
        try:
            run(args, channel)
        except grpc.RpcError as err:
            print_error(err)
            sys.exit(1)


if __name__ == "__main__":
    main()
