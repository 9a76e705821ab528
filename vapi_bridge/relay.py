"""One thread relays every live stream once its first frame is out.

With a thread per stream, each chunk wakes its own thread, and its upstream read and its
write to Vapi each hand the GIL over: at tens of streams that hand-over (futex waits, context
switches) costs more CPU than the chunk's own work, and every stream waits for it. The relay
loop waits on every stream's upstream socket at once and, for each one that is readable, runs
the turn's frames (read, stages, framing) and writes what came out to Vapi's socket.

Each server process runs one loop (werkzeug's threaded server; each gunicorn worker with
``--workers``). The request's thread still does everything per request: the server parses
the request, Flask runs the app, the turn finds a model and writes the first frame (status
and headers with it). It then hands the frames to the loop and waits; the loop hands them
back once ``[DONE]`` is written, and the request's thread ends the turn and the response as
before. So the loop only ever runs stages and framing: the request log and reply hooks (user
code that may block) stay on the request's thread.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import selectors
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Protocol, cast

from vapi_bridge import sse
from vapi_bridge.upstream import Blocked

log = logging.getLogger("vapi_bridge")

# Where a server that runs a relay loop puts it in the WSGI environ, and the client's socket.
ENVIRON_KEY = "vapi_bridge.relay"
SOCKET_KEY = "vapi_bridge.client"

# Frames that are ready together go out in one write, up to this many bytes.
WRITE_MAX = 64 * 1024

# Streams one loop carries at once when its selector is select() (Windows' default), which
# takes at most 512 sockets; each stream on the loop has one socket watched at a time. Past
# it, a stream is relayed by its request's thread, as without a loop.
SELECT_SEATS = 500


class Streaming(Protocol):
    """What the handover needs from a turn."""

    def without_waiting(self) -> bool: ...


class _Job:
    """One reply being relayed: its frames, Vapi's socket, the bytes not yet written."""

    __slots__ = ("client", "done", "ended", "error", "frames", "out", "timeout", "watching")

    def __init__(self, frames: Iterator[bytes | Blocked], client: socket.socket) -> None:
        self.frames = frames
        self.client = client
        self.timeout = client.gettimeout()
        self.out = bytearray()
        self.ended = False  # the last frame is in ``out``: the frames are not run again here
        self.done = threading.Event()
        self.error: BaseException | None = None
        # The socket and events the loop watches for this job now, if any.
        self.watching: tuple[socket.socket, int] | None = None


class RelayLoop:
    """The loop's thread, started on first use, and the streams it carries (at most
    ``seats`` at once; no limit by default, except :data:`SELECT_SEATS` on ``select()``)."""

    def __init__(
        self, selector: selectors.BaseSelector | None = None, *, seats: int | None = None
    ) -> None:
        self._selector = selector if selector is not None else selectors.DefaultSelector()
        if seats is None and isinstance(self._selector, selectors.SelectSelector):
            seats = SELECT_SEATS
        self._seats = seats
        self._seated = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._incoming: collections.deque[_Job] = collections.deque()
        self._jobs: set[_Job] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False  # also set by the loop's thread when it ends
        self._closed = False  # close() was called

    def carry(
        self,
        frames: Iterator[bytes | Blocked],
        client: socket.socket,
        start: Callable[[], bool],
    ) -> bool:
        """Relay ``frames`` to ``client`` from the loop until ``[DONE]`` is written (or the
        frames end); the calling thread waits, then owns the frames again.

        ``start()`` switches the frames to reads that never wait, once the loop has a seat
        for them; ``False`` from it, or no seat, returns ``False`` at once with nothing
        changed: the caller relays the frames itself, as it does once the loop is closed.
        Raises what the frames raised, or the :class:`OSError` of a write to a client that
        left, as a write on this thread would. A reply still on the loop when it closes is
        cut: its client's socket is shut, and :class:`BrokenPipeError` raised, as the next
        write would (servers take it for a client gone, without a traceback).
        """
        with self._lock:
            if self._closing:
                return False
            if self._seats is not None and self._seated >= self._seats:
                return False
            self._seated += 1
        try:
            started = start()
        except BaseException:
            self._unseat()
            raise
        if not started:
            self._unseat()
            return False
        job = _Job(frames, client)
        with self._lock:
            if self._closing:
                self._seated -= 1
                raise _cut(client)
            self._incoming.append(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="vapi-bridge-relay", daemon=True
                )
                self._thread.start()
        self._wake()
        job.done.wait()
        if job.error is not None:
            error, job.error = job.error, None
            raise error
        return True

    def close(self) -> None:
        """Stop the loop (once; later calls return); a stream still on it is cut."""
        with self._lock:
            if self._closed:
                return
            self._closing = self._closed = True
            thread = self._thread
        if thread is not None:
            self._wake()
            thread.join(5.0)
        if thread is None or not thread.is_alive():
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _unseat(self) -> None:
        with self._lock:
            self._seated -= 1

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        try:
            while not self._closing:
                try:
                    ready = self._selector.select()
                except (OSError, ValueError) as exc:
                    if not self._end_carried(exc):
                        raise
                    continue
                for key, _ in ready:
                    job = key.data
                    if job is None:
                        self._take_incoming()
                    else:
                        self._step(job)
        finally:
            with self._lock:
                self._closing = True
                jobs = [*self._jobs, *self._incoming]
                self._incoming.clear()
            for job in jobs:
                self._end(job, _cut(job.client))

    def _end_carried(self, error: BaseException) -> bool:
        """The selector failed (a socket it cannot watch): end the streams on the loop with
        that error, so that it goes on for the next ones; ``False`` if there were none."""
        with self._lock:
            jobs = list(self._jobs)
        log.error(
            "the relay loop cannot wait on its sockets (%s): %d reply(s) cut", error, len(jobs)
        )
        for job in jobs:
            self._end(job, error)
        return bool(jobs)

    def _take_incoming(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_r.recv(4096)
        while True:
            with self._lock:
                if not self._incoming:
                    return
                job = self._incoming.popleft()
                self._jobs.add(job)
            try:
                job.client.setblocking(False)
            except OSError as exc:
                self._end(job, exc)
                continue
            self._step(job)

    def _step(self, job: _Job) -> None:
        """Write what is pending, then run the frames and write, until the frames would wait
        (the loop then watches the upstream), the client stops reading (the loop watches the
        client; no more is read upstream for it meanwhile) or ``[DONE]`` is out."""
        try:
            out = job.out
            while True:
                if out and not self._write(job):
                    return
                if job.ended:
                    self._end(job, None)
                    return
                blocked = self._pull(job)
                if blocked is not None:
                    if out and not self._write(job):
                        return
                    self._watch(job, blocked.sock, blocked.events)
                    return
        except BaseException as exc:  # a bug in the frames: the request's thread reports it
            self._end(job, exc)

    @staticmethod
    def _pull(job: _Job) -> Blocked | None:
        """Run the frames into ``job.out`` (as HTTP/1.1 chunks) until they would wait (the
        :class:`Blocked` they gave), end, or fill a write."""
        out = job.out
        while len(out) < WRITE_MAX:
            frame = next(job.frames, None)
            if frame is None:
                job.ended = True
                return None
            if isinstance(frame, Blocked):
                return frame
            out += b"%x\r\n%b\r\n" % (len(frame), frame)
            if frame is sse.DONE:
                job.ended = True
                return None
        return None

    def _write(self, job: _Job) -> bool:
        """Send what is pending; ``True`` once all of it is out, else the loop waits for the
        client to read (and reads no more upstream for this job meanwhile)."""
        out = job.out
        if out:
            try:
                sent = job.client.send(out)
            except BlockingIOError:
                sent = 0
            del out[:sent]
            if out:
                self._watch(job, job.client, selectors.EVENT_WRITE)
                return False
        return True

    def _watch(self, job: _Job, sock: socket.socket, events: int) -> None:
        watching = job.watching
        if watching is not None and watching[0] is sock:
            if watching[1] != events:
                self._selector.modify(sock, events, job)
                job.watching = (sock, events)
            return
        if watching is not None:
            self._selector.unregister(watching[0])
        self._selector.register(sock, events, job)
        job.watching = (sock, events)

    def _end(self, job: _Job, error: BaseException | None) -> None:
        """Give the frames back to the request's thread."""
        if job.watching is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(job.watching[0])
            job.watching = None
        with contextlib.suppress(OSError):
            job.client.settimeout(job.timeout)
        with self._lock:
            self._jobs.discard(job)
            self._seated -= 1
        job.error = error
        job.done.set()


def _cut(client: socket.socket) -> BrokenPipeError:
    """Shut a reply's connection that the stopping loop will not finish: the error to raise
    is the one a write to it now gets."""
    with contextlib.suppress(OSError):
        client.shutdown(socket.SHUT_RDWR)
    return BrokenPipeError(errno.EPIPE, "the bridge stopped: the reply was cut")


class Handover:
    """A streamed reply's WSGI body on a server with a relay loop.

    The server writes the first frame (with the status and headers) and asks for the next:
    the frames then go to the loop until ``[DONE]`` is written, and come back for the end (the
    turn's request log, the response's end), all on the request's thread.
    """

    def __init__(
        self,
        frames: Iterator[bytes | Blocked],
        turn: Streaming,
        loop: RelayLoop,
        client: socket.socket,
    ) -> None:
        self._frames = frames
        self._turn = turn
        self._loop = loop
        self._client = client
        self._first = True
        self._handed = False

    def __iter__(self) -> Handover:
        return self

    def __next__(self) -> bytes:
        if self._first:
            self._first = False
        elif not self._handed:
            self._handed = True
            self._loop.carry(self._frames, self._client, self._turn.without_waiting)
        # The loop gave the frames back after [DONE], or never took them (no seat; a turn
        # that cannot read without waiting): only blocking reads are left.
        return cast(bytes, next(self._frames))

    def close(self) -> None:
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()


def offer(environ: dict[str, object], loop: RelayLoop, client: socket.socket) -> None:
    """Let ``loop`` carry this request's streamed reply, written to ``client``. The loop
    writes HTTP/1.1 chunks: a server offers only the replies it sends chunked."""
    environ[ENVIRON_KEY] = loop
    environ[SOCKET_KEY] = client


def body(
    frames: Iterator[bytes | Blocked], turn: Streaming, environ: dict[str, object]
) -> Iterator[bytes]:
    """The WSGI body for a streamed turn: handed to the server's relay loop when it runs one."""
    loop = environ.get(ENVIRON_KEY)
    client = environ.get(SOCKET_KEY)
    if isinstance(loop, RelayLoop) and isinstance(client, socket.socket):
        return Handover(frames, turn, loop, client)
    # No loop: the frames stay blocking, so they never yield a Blocked.
    return cast(Iterator[bytes], frames)
