"""A client-side Server-Sent Events parser, as the WHATWG HTML standard specifies it.

Pure and incremental: feed it bytes as they arrive, in chunks of any size,
and it returns the events completed so far. No sockets, no threads.

The rules (HTML standard, "Parsing an event stream"):

- the stream is UTF-8 (invalid bytes become U+FFFD); one leading BOM is dropped;
- lines end with CRLF, LF or CR, even when a CRLF is split across two chunks;
- a line starting with ``:`` is a comment and is ignored;
- ``name: value`` sets a field; one space after the colon is dropped, so
  ``data:x`` and ``data: x`` are the same, and ``data:  x`` keeps one space;
  a line without a colon is a field with an empty value;
- ``event`` sets the type, ``data`` appends a line (lines joined with LF),
  ``id`` sets the last event id unless it contains NUL (it persists across
  events), ``retry`` sets the reconnection time if it is all ASCII digits;
  any other field is ignored;
- a blank line dispatches the event, unless no ``data`` came (then the
  buffered type is just reset); an unfinished event at end of stream is dropped.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_EOL = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    """A dispatched event: its type (``"message"`` by default), its data and the last event id."""

    event: str = "message"
    data: str = ""
    id: str = ""


class SSEParser:
    """Turns the bytes of an event stream into :class:`Event` objects.

    >>> parser = SSEParser()
    >>> parser.feed(b"event: greet\\ndata: hi\\n")
    []
    >>> parser.feed(b"\\n")
    [Event(event='greet', data='hi', id='')]
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False  # whether the BOM check is done
        self._pending: list[str] = []  # the unfinished line
        self._after_cr = False  # the last chunk ended with CR: an LF next is part of it
        self._data: list[str] = []
        self._event = ""
        #: The last event id; it carries over to later events until changed.
        self.last_event_id = ""
        #: The reconnection time in milliseconds, once the server set one.
        self.retry: int | None = None
        #: How many comment lines (keep-alives) were seen.
        self.comments = 0

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse ``chunk``; return the events it completed, in order."""
        return self._feed_text(self._decoder.decode(chunk))

    def close(self) -> list[Event]:
        """End of stream: flush the decoder. An event without its blank line is dropped."""
        events = self._feed_text(self._decoder.decode(b"", final=True))
        self._pending.clear()
        self._data.clear()
        self._event = ""
        return events

    def _feed_text(self, text: str) -> list[Event]:
        if not text:
            return []
        if not self._started:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._after_cr:
            self._after_cr = False
            if text.startswith("\n"):
                text = text[1:]
        events: list[Event] = []
        pos = 0
        for match in _EOL.finditer(text):
            self._pending.append(text[pos : match.start()])
            line = "".join(self._pending)
            self._pending.clear()
            event = self._line(line)
            if event is not None:
                events.append(event)
            pos = match.end()
        if pos < len(text):
            self._pending.append(text[pos:])
        elif text.endswith("\r"):
            # A CR ends a line at once (no waiting for the next chunk), but an
            # LF right after it in the next chunk must not count as a blank line.
            self._after_cr = True
        return events

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        event, self._event = self._event, ""
        if not self._data:
            return None
        data = "\n".join(self._data)
        self._data.clear()
        return Event(event or "message", data, self.last_event_id)


def parse(stream: bytes) -> list[Event]:
    """Every event of a complete stream."""
    parser = SSEParser()
    return parser.feed(stream) + parser.close()
