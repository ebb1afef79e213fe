#!/usr/bin/env python3
"""Example Python client for gws-sms-gateway (gws.sms.v1.SmsSessionService).

Generate the stubs first (see README.md), then e.g.:

    python client.py --user agent1 --password password1 events
    python client.py --user agent1 --password password1 \
        delete-user-data --session 0071023821aec011 --key UserData1
"""

import argparse
import base64
import json
import os
import sys

import grpc

# The generated stubs live in ./gen (not committed; see README.md).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))
try:
    from gws.sms.v1 import sms_session_pb2 as pb
    from gws.sms.v1 import sms_session_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover
    sys.exit(f"cannot import the generated stubs ({e}); generate them first, see README.md")


# --- helpers -----------------------------------------------------------------


def metadata(args):
    """The call metadata: `authorization: Basic base64(user:password)` when a user is given."""
    if args.user is None:
        return ()
    raw = f"{args.user}:{args.password or ''}".encode("utf-8")
    return (("authorization", "Basic " + base64.b64encode(raw).decode("ascii")),)


def user_data_value(v):
    """UserDataValue -> a plain Python value (keeps "3" vs 3, and null)."""
    kind = v.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "null_value":
        return None
    if kind == "map_value":
        return {k: user_data_value(x) for k, x in v.map_value.fields.items()}
    if kind == "list_value":
        return [user_data_value(x) for x in v.list_value.values]
    return getattr(v, kind)


def print_error(err: grpc.RpcError):
    """Prints code, message and the google.rpc details (ErrorInfo, BadRequest, ...)."""
    print(f"ERROR code={err.code().name} message={err.details()!r}", file=sys.stderr)
    try:
        from grpc_status import rpc_status
        from google.rpc import error_details_pb2
    except ImportError:
        return
    status = rpc_status.from_call(err)
    if status is None:
        return
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            print(
                f"  ErrorInfo reason={info.reason} domain={info.domain} "
                f"metadata={dict(info.metadata)}",
                file=sys.stderr,
            )
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            for fv in br.field_violations:
                print(
                    f"  BadRequest field={fv.field!r} description={fv.description!r}",
                    file=sys.stderr,
                )
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            detail.Unpack(ri)
            print(f"  RetryInfo retry_delay={ri.retry_delay.ToTimedelta()}", file=sys.stderr)
        elif detail.Is(error_details_pb2.DebugInfo.DESCRIPTOR):
            di = error_details_pb2.DebugInfo()
            detail.Unpack(di)
            print(f"  DebugInfo detail={di.detail!r}", file=sys.stderr)
        else:
            print(f"  detail {detail.type_url}", file=sys.stderr)


def describe_event(ev):
    """One SessionEventsResponse -> a one-line JSON-ish dict."""
    out = {"resume_token": ev.resume_token}
    if ev.HasField("receive_time"):
        out["receive_time"] = ev.receive_time.ToJsonString()
    kind = ev.WhichOneof("event")
    if kind == "notice":
        out["notice"] = {
            "kind": pb.NoticeKind.Name(ev.notice.kind),
            "detail": ev.notice.detail,
        }
    elif kind == "state_change":
        sc = ev.state_change
        s = sc.session
        out["state_change"] = {
            "notification_type": pb.NotificationType.Name(sc.notification_type),
            "notification_type_name": sc.notification_type_name,
            "reference_id": sc.reference_id if sc.HasField("reference_id") else None,
            "error_message": sc.error_message or None,
            "session": {
                "id": s.id,
                "state": pb.SessionState.Name(s.state),
                "state_name": s.state_name,
                "user_data": {k: user_data_value(v) for k, v in sorted(s.user_data.items())},
                "user_data_kinds": {
                    k: v.WhichOneof("kind") for k, v in sorted(s.user_data.items())
                },
                "capabilities": list(s.capabilities),
                "uri": s.uri,
                "participants": [
                    {
                        "id": p.participant_id,
                        "nickname": p.nickname,
                        "type": pb.ParticipantType.Name(p.type),
                        "type_name": p.type_name,
                    }
                    for p in s.participants
                ],
            },
        }
    elif kind == "message_log":
        ml = ev.message_log
        out["message_log"] = {
            "session_id": ml.session_id,
            "messages": [
                {
                    "index": m.index,
                    "type": m.type,
                    "text": m.text,
                    "visibility": m.visibility,
                    "from": m.sender.nickname,
                    "time": m.time.ToJsonString() if m.HasField("time") else None,
                    "url": m.url or None,
                }
                for m in ml.messages
            ],
        }
    elif kind == "snapshot":
        out["snapshot"] = [
            {"id": s.id, "state_name": s.state_name} for s in ev.snapshot.sessions
        ]
    return out


# --- commands ----------------------------------------------------------------


def cmd_delete_user_data(args, channel):
    stub = pb_grpc.SmsSessionServiceStub(channel)
    req = pb.DeleteUserDataRequest(session_id=args.session, keys=args.key)
    resp = stub.DeleteUserData(req, metadata=metadata(args), timeout=args.timeout)
    ref = resp.reference_id if resp.HasField("reference_id") else None
    print(f"OK DeleteUserData session={args.session} keys={args.key} reference_id={ref}")


def cmd_events(args, channel):
    stub = pb_grpc.SmsSessionServiceStub(channel)
    req = pb.SessionEventsRequest(
        session_ids=args.session or [],
        resume_token=args.resume_token or "",
        include_snapshot=args.snapshot,
    )
    stream = stub.SessionEvents(req, metadata=metadata(args))
    try:
        for ev in stream:
            print(json.dumps(describe_event(ev), ensure_ascii=False), flush=True)
    except KeyboardInterrupt:
        stream.cancel()
        return
    print("stream ended (OK)", flush=True)


def cmd_health(args, channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "gws.sms.v1.SmsSessionService"):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=args.timeout)
        print(f"health {service!r}: {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}")


def cmd_list_services(args, channel):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    from google.protobuf.descriptor_pool import DescriptorPool

    db = ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    for s in services:
        print(f"service {s}")
    pool = DescriptorPool(db)
    svc = pool.FindServiceByName("gws.sms.v1.SmsSessionService")
    for m in svc.methods:
        stream = " (server streaming)" if m.server_streaming else ""
        print(f"  rpc {m.name}({m.input_type.full_name}) -> {m.output_type.full_name}{stream}")


def main():
    p = argparse.ArgumentParser(description="gws-sms-gateway example client")
    p.add_argument("--addr", default="127.0.0.1:50051", help="gateway address (default %(default)s)")
    p.add_argument("--user", help="agent user name (Basic credentials)")
    p.add_argument("--password", help="agent password")
    p.add_argument("--timeout", type=float, default=15.0, help="deadline of unary calls, seconds")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("delete-user-data", help="DeleteUserData")
    d.add_argument("--session", required=True, help="SMS session id")
    d.add_argument("--key", required=True, nargs="+", action="extend", help="user-data key(s)")
    d.set_defaults(func=cmd_delete_user_data)

    e = sub.add_parser("events", help="SessionEvents (streams until stopped)")
    e.add_argument("--session", action="append", help="only this session (repeatable)")
    e.add_argument("--resume-token", help="resume after this token")
    e.add_argument("--snapshot", action="store_true", help="start with the agent's sessions")
    e.set_defaults(func=cmd_events)

    h = sub.add_parser("health", help="grpc.health.v1 Check (needs grpcio-health-checking)")
    h.set_defaults(func=cmd_health)

    r = sub.add_parser("list-services", help="server reflection (needs grpcio-reflection)")
    r.set_defaults(func=cmd_list_services)

    args = p.parse_args()
    with grpc.insecure_channel(args.addr) as channel:
        try:
            args.func(args, channel)
        except grpc.RpcError as err:
            print_error(err)
            sys.exit(1)


if __name__ == "__main__":
    main()
