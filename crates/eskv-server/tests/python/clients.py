"""The official Python clients of UmaDB (`umadb`) and KurrentDB
(`kurrentdbclient`), unchanged, against `eskv serve`.

Run by `cargo xtask ci` (it makes the virtual environment):
    python clients.py ESKV_BINARY TLS_DIR
Starts its own servers on 127.0.0.1 over redb files in a temporary
directory, and stops them with SIGTERM, which must end them cleanly.
"""

import os
import signal
import subprocess
import sys
import tempfile
import uuid

import umadb
from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.events import CaughtUp, Checkpoint
from kurrentdbclient.exceptions import (
    FailedPreconditionError,
    NotFoundError,
    StreamIsDeletedError,
    UnauthenticatedError,
    WrongCurrentVersionError,
)


def start(binary, store, *flags):
    proc = subprocess.Popen(
        [binary, "--store", f"redb:{store}", "serve", "--listen", "127.0.0.1:0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on "), f"server said {line!r}"
    return proc, line.removeprefix("listening on ")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    assert code == 0, f"eskv serve exited with {code} after SIGTERM"


def umadb_flows(addr):
    a = umadb.Client(f"http://{addr}")
    b = umadb.Client(f"http://{addr}")
    boundary = umadb.Query([umadb.QueryItem(types=["StudentSubscribed"], tags=["course:py"])])
    seen, head = a.read(query=boundary).collect_with_head()
    assert seen == [] and head is None, (seen, head)
    first = umadb.Event(
        "StudentSubscribed", b'{"s":1}', tags=["course:py", "student:1"],
        uuid=uuid.uuid4(), metadata={"who": "python"},
    )
    cond = umadb.AppendCondition(boundary, after=head)
    assert a.append([first], cond) == 1
    try:
        b.append([umadb.Event("StudentSubscribed", b"{}", tags=["course:py"], uuid=uuid.uuid4())], cond)
        raise AssertionError("a stale condition must fail")
    except umadb.IntegrityError:
        pass
    assert a.append([first], cond) == 1, "an idempotent retry returns the original position"
    b.append([umadb.Event("CourseDefined", b"{}", tags=["course:other"], uuid=uuid.uuid4())])
    forwards = [e.position for e in a.read()]
    backwards = [e.position for e in a.read(backwards=True, limit=1)]
    assert (forwards, backwards) == ([1, 2], [2]), (forwards, backwards)
    got = list(a.read(query=boundary))[0].event
    assert (got.uuid, got.data, got.tags, got.metadata) == (
        first.uuid, first.data, first.tags, first.metadata), got
    sub = a.subscribe(query=boundary)
    assert next(sub).position == 1
    later = umadb.Event("StudentSubscribed", b'{"s":2}', tags=["course:py", "student:2"], uuid=uuid.uuid4())
    p = b.append([later])
    live = next(sub)
    assert (live.position, live.event.uuid) == (p, later.uuid)
    assert a.head() == p


def kurrent_flows(addr):
    a = KurrentDBClient(uri=f"kurrentdb://{addr}?tls=false")
    b = KurrentDBClient(uri=f"kurrentdb://{addr}?tls=false")
    first = NewEvent(type="OrderPlaced", data=b'{"n":1}', metadata=b"\x00custom\xff", id=uuid.uuid4())
    a.append_to_stream("order-py", current_version=StreamState.NO_STREAM, events=first)
    # A list goes through BatchAppend.
    a.append_to_stream(
        "order-py", current_version=0,
        events=[NewEvent(type="OrderPaid", data=b'{"n":2}'),
                NewEvent(type="OrderShipped", data=b"binary", content_type="application/octet-stream")],
    )
    for stale in (0, StreamState.NO_STREAM):
        try:
            b.append_to_stream("order-py", current_version=stale, events=[NewEvent(type="X", data=b"{}")])
            raise AssertionError("a stale expected version must fail")
        except WrongCurrentVersionError:
            pass
    # The same event again with the same expected version: idempotent.
    a.append_to_stream("order-py", current_version=StreamState.NO_STREAM, events=first)
    events = a.get_stream("order-py")
    assert [(e.type, e.stream_position) for e in events] == [
        ("OrderPlaced", 0), ("OrderPaid", 1), ("OrderShipped", 2)], events
    assert (events[0].id, events[0].metadata, events[0].content_type) == (
        first.id, b"\x00custom\xff", "application/json"), events[0]
    assert events[2].content_type == "application/octet-stream"
    back = a.get_stream("order-py", backwards=True, limit=2)
    assert [e.stream_position for e in back] == [2, 1]
    try:
        a.get_stream("no-such-stream")
        raise AssertionError("a missing stream must be NotFound")
    except NotFoundError:
        pass
    all_positions = [e.commit_position for e in a.read_all()]
    assert all_positions == sorted(all_positions) and len(all_positions) >= 3, all_positions
    assert [e.commit_position for e in a.read_all(backwards=True, limit=1)] == all_positions[-1:]

    sub = a.subscribe_to_stream("order-py", include_caught_up=True)
    seen = []
    for e in sub:
        if isinstance(e, CaughtUp):
            b.append_to_stream("order-py", current_version=2, events=NewEvent(type="OrderDelivered", data=b"{}"))
            continue
        seen.append(e.type)
        if len(seen) == 4:
            break
    sub.stop()
    assert seen == ["OrderPlaced", "OrderPaid", "OrderShipped", "OrderDelivered"], seen

    # $all with the client's default exclusion filter (a look-ahead
    # regular expression), an include filter and checkpoints.
    sub = a.subscribe_to_all(filter_include=["OrderPa.*"], include_checkpoints=True, include_caught_up=True)
    types, checkpoints = [], 0
    for e in sub:
        if isinstance(e, Checkpoint):
            checkpoints += 1
            if types:
                break
        elif isinstance(e, CaughtUp):
            continue
        else:
            types.append(e.type)
    sub.stop()
    assert types == ["OrderPaid"] and checkpoints >= 1, (types, checkpoints)
    lifecycle_flows(a, b)


def expect(error, f, *args, **kwargs):
    try:
        f(*args, **kwargs)
    except error:
        return
    raise AssertionError(f"expected {error.__name__} from {f.__name__}{args}")


def lifecycle_flows(a, b):
    a.append_to_stream("cart-py", current_version=StreamState.NO_STREAM,
                       events=[NewEvent(type="ItemAdded", data=b"{}"), NewEvent(type="ItemAdded", data=b"{}")])
    # Expected revisions of a delete: stale, no_stream on a live stream, and
    # an exact one on a stream that never existed.
    expect(WrongCurrentVersionError, a.delete_stream, "cart-py", current_version=0)
    expect(WrongCurrentVersionError, a.delete_stream, "cart-py", current_version=StreamState.NO_STREAM)
    expect(NotFoundError, a.delete_stream, "never-py", current_version=0)
    a.delete_stream("cart-py", current_version=1)
    expect(NotFoundError, a.get_stream, "cart-py")
    # Deleting again: `any` has nothing to do; `stream_exists` is deleted.
    a.delete_stream("cart-py", current_version=StreamState.ANY)
    expect(StreamIsDeletedError, a.delete_stream, "cart-py", current_version=StreamState.EXISTS)
    # The default $all read excludes the `$`-typed lifecycle events; an
    # unfiltered one shows them, and skips the deleted stream's events.
    assert not [e for e in a.read_all() if e.type.startswith("$") or e.stream_name == "cart-py"]
    raw = [e.type for e in a.read_all(filter_exclude=[])]
    assert "$stream-deleted" in raw and raw.count("ItemAdded") == 0, raw
    # Appending re-creates it; its positions continue (BatchAppend, then Append).
    a.append_to_stream("cart-py", current_version=StreamState.NO_STREAM,
                       events=[NewEvent(type="ItemAdded", data=b'{"n":3}')])
    assert [e.stream_position for e in a.get_stream("cart-py")] == [2]
    # Tombstone: stale revision refused, then final for reads, appends
    # (either RPC), deletes and tombstones.
    expect(WrongCurrentVersionError, b.tombstone_stream, "cart-py", current_version=1)
    b.tombstone_stream("cart-py", current_version=2)
    expect(StreamIsDeletedError, a.get_stream, "cart-py")
    # (The client maps Append's status only by its code; the message is
    # KurrentDB's.)
    try:
        a.append_to_stream("cart-py", current_version=StreamState.ANY, events=NewEvent(type="ItemAdded", data=b"{}"))
        raise AssertionError("appending to a tombstoned stream must fail")
    except FailedPreconditionError as e:
        assert "Event stream 'cart-py' is deleted." in str(e), e
    expect(StreamIsDeletedError, a.append_to_stream, "cart-py", current_version=StreamState.ANY,
           events=[NewEvent(type="ItemAdded", data=b"{}"), NewEvent(type="ItemAdded", data=b"{}")])
    expect(StreamIsDeletedError, a.delete_stream, "cart-py", current_version=StreamState.ANY)
    expect(StreamIsDeletedError, a.tombstone_stream, "cart-py", current_version=StreamState.ANY)
    # A name that never existed can be tombstoned.
    a.tombstone_stream("never-py", current_version=StreamState.NO_STREAM)
    expect(StreamIsDeletedError, a.get_stream, "never-py")


def secured_flows(addr, tls_dir):
    ca = os.path.join(tls_dir, "cert.pem")
    port = addr.rsplit(":", 1)[1]
    for key in (None, "wrong"):
        try:
            umadb.Client(f"https://localhost:{port}", ca_path=ca, api_key=key).head()
            raise AssertionError("no valid key must be refused")
        except umadb.AuthenticationError:
            pass
    ok = umadb.Client(f"https://localhost:{port}", ca_path=ca, api_key="py-key")
    ok.append([umadb.Event("Secured", b"{}", uuid=uuid.uuid4())])
    assert ok.head() == 1
    uri = f"kurrentdb://{{}}localhost:{port}?tls=true&tlsCaFile={ca}"
    try:
        KurrentDBClient(uri=uri.format("alice:wrong@")).append_to_stream(
            "s-1", current_version=StreamState.ANY, events=NewEvent(type="X", data=b"{}"))
        raise AssertionError("wrong credentials must be refused")
    except UnauthenticatedError as e:
        assert str(e) == "missing or invalid credentials", e
    alice = KurrentDBClient(uri=uri.format("alice:secret@"))
    alice.append_to_stream("s-1", current_version=StreamState.NO_STREAM, events=NewEvent(type="X", data=b"{}"))
    assert [e.type for e in alice.get_stream("s-1")] == ["X"]


def main():
    binary, tls_dir = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        proc, addr = start(binary, os.path.join(tmp, "open.redb"))
        try:
            umadb_flows(addr)
            kurrent_flows(addr)
        finally:
            stop(proc)
        auth = os.path.join(tmp, "auth")
        with open(auth, "w") as f:
            f.write("token py-key\nbasic alice secret\n")
        proc, addr = start(
            binary, os.path.join(tmp, "secured.redb"),
            "--tls-cert", os.path.join(tls_dir, "cert.pem"),
            "--tls-key", os.path.join(tls_dir, "key.pem"),
            "--auth-file", auth,
        )
        try:
            secured_flows(addr, tls_dir)
        finally:
            stop(proc)
    print("python clients: umadb and kurrentdbclient flows passed")


if __name__ == "__main__":
    main()
