"""A GNSS route for the simulated location module: parsing and interpolation.

Design
------
A ``Route`` is a list of points, each with a latitude, a longitude, an
altitude and, optionally, a time.  ``position_at(seconds)`` answers where a
device driving the route would be ``seconds`` after it set off:

* A route whose points all carry times is driven on its own clock: between
  two points the position is interpolated linearly in time, and the speed
  is the leg's length over its duration.  Legs of zero duration (two points
  with one timestamp) are jumped over.
* A route without times is driven at a constant ``speed`` (10 m/s, city
  traffic) along every leg.
* Either way the route loops: after the last point the device drives
  straight back to the first at ``speed``, then starts over.  A closed
  track (last point on the first) has no return leg to speak of.

Positions are interpolated linearly in latitude and longitude, which is
exact enough for legs of a few kilometres; lengths are great-circle
distances and the heading is the initial bearing of the leg, in degrees
clockwise from north.

Inputs are GPX 1.0/1.1 (``trkpt`` elements with ``lat``/``lon``
attributes and optional ``ele`` and ``time`` children) and NMEA 0183
(``$..RMC`` and ``$..GGA`` sentences; others are skipped).  Bad input
raises ``RouteError`` naming the line and the element or field at fault.
"""

from __future__ import annotations

import bisect
import datetime
import math
import pathlib
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple
from xml.parsers import expat

import attrs

# Metres per second for routes without times and for the return leg.
DEFAULT_SPEED: Final = 10.0
# The mean Earth radius (IUGG), metres.
EARTH_RADIUS: Final = 6_371_008.8
KNOTS: Final = 1852.0 / 3600.0

# A loop of about 12 km through Trondheim: Torvet, the harbour, Solsiden,
# Lademoen, Rosenborg, Bakklandet, Gløshaugen, Lerkendal, Byåsen, Ila and
# back past the cathedral.  Latitude, longitude (degrees), altitude (m).
_TRONDHEIM: Final = (
    (63.4305, 10.3951, 12.0),
    (63.4343, 10.3928, 3.0),
    (63.4366, 10.3990, 4.0),
    (63.4346, 10.4120, 5.0),
    (63.4371, 10.4251, 15.0),
    (63.4330, 10.4320, 30.0),
    (63.4300, 10.4180, 18.0),
    (63.4285, 10.4060, 10.0),
    (63.4282, 10.4020, 8.0),
    (63.4230, 10.3960, 20.0),
    (63.4180, 10.4030, 45.0),
    (63.4125, 10.4040, 55.0),
    (63.4090, 10.3950, 35.0),
    (63.4150, 10.3720, 60.0),
    (63.4290, 10.3700, 15.0),
    (63.4330, 10.3770, 5.0),
    (63.4310, 10.3850, 10.0),
    (63.4280, 10.3920, 12.0),
    (63.4269, 10.3969, 14.0),
    (63.4300, 10.3990, 12.0),
)


class RouteError(ValueError):
    """A route could not be read; the message names the place at fault."""


class Position(NamedTuple):
    """Where the device is: degrees, metres, m/s and degrees from north."""

    latitude: float
    longitude: float
    altitude: float
    speed: float
    heading: float


@attrs.frozen
class RoutePoint:
    """One point of a route; ``time`` is in seconds (any epoch) or None."""

    latitude: float
    longitude: float
    altitude: float = 0.0
    time: float | None = None


def distance(a: RoutePoint, b: RoutePoint) -> float:
    """The great-circle distance from ``a`` to ``b``, in metres."""
    lat1, lat2 = math.radians(a.latitude), math.radians(b.latitude)
    dlat = lat2 - lat1
    dlon = math.radians(b.longitude - a.longitude)
    h = (
        math.sin(dlat / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    )
    return 2 * EARTH_RADIUS * math.asin(min(1.0, math.sqrt(h)))


def bearing(a: RoutePoint, b: RoutePoint) -> float:
    """The initial bearing from ``a`` to ``b``, degrees in [0, 360)."""
    lat1, lat2 = math.radians(a.latitude), math.radians(b.latitude)
    dlon = math.radians(b.longitude - a.longitude)
    y = math.sin(dlon) * math.cos(lat2)
    x = math.cos(lat1) * math.sin(lat2) - (
        math.sin(lat1) * math.cos(lat2) * math.cos(dlon)
    )
    return math.degrees(math.atan2(y, x)) % 360.0


def _check_points(
    instance: object, attribute: object, value: tuple[RoutePoint, ...]
) -> None:
    if not value:
        raise RouteError("a route needs at least one point")
    timed = [p.time is not None for p in value]
    if any(timed) and not all(timed):
        raise RouteError(
            f"point {timed.index(False)}: every point or none must have a time"
        )
    for index, point in enumerate(value):
        if not -90.0 <= point.latitude <= 90.0:
            raise RouteError(f"point {index}: latitude {point.latitude} out of range")
        if not -180.0 <= point.longitude <= 180.0:
            raise RouteError(f"point {index}: longitude {point.longitude} out of range")
        if index and point.time is not None:
            previous = value[index - 1].time
            assert previous is not None
            if point.time < previous:
                raise RouteError(f"point {index}: time goes backwards")


@attrs.frozen
class Route:
    """A looping route; see the module docstring for how it is driven.

    Args:
      points: the points, in driving order; all with times or none.
      speed: metres per second for untimed routes and for the return leg.
    """

    points: tuple[RoutePoint, ...] = attrs.field(
        converter=tuple, validator=_check_points
    )
    speed: float = attrs.field(
        default=DEFAULT_SPEED, validator=attrs.validators.gt(0)
    )
    # Seconds from the first point at which each leg starts; the last entry
    # is the loop's period.  Leg i runs from point i to point i + 1 (the
    # last leg back to point 0).
    _starts: tuple[float, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        starts = [0.0]
        points = self.points
        timed = points[0].time is not None
        for index, point in enumerate(points):
            following = points[(index + 1) % len(points)]
            if timed and index + 1 < len(points):
                assert point.time is not None and following.time is not None
                duration = following.time - point.time
            else:
                duration = distance(point, following) / self.speed
            starts.append(starts[-1] + duration)
        object.__setattr__(self, "_starts", tuple(starts))

    @property
    def period(self) -> float:
        """Seconds for one lap, return leg included."""
        return self._starts[-1]

    @property
    def length(self) -> float:
        """Metres of one lap, return leg included."""
        n = len(self.points)
        return sum(
            distance(self.points[i], self.points[(i + 1) % n]) for i in range(n)
        )

    def position_at(self, seconds: float) -> Position:
        """Where the device is ``seconds`` after it left the first point."""
        first = self.points[0]
        if self.period <= 0:
            return Position(first.latitude, first.longitude, first.altitude, 0.0, 0.0)
        t = seconds % self.period

        # bisect_right skips legs of zero duration: t lands in the last leg
        # that starts at or before it.
        leg = min(bisect.bisect_right(self._starts, t) - 1, len(self.points) - 1)
        start, end = self._starts[leg], self._starts[leg + 1]
        a = self.points[leg]
        b = self.points[(leg + 1) % len(self.points)]
        duration = end - start
        fraction = (t - start) / duration if duration > 0 else 0.0

        length = distance(a, b)
        speed = length / duration if duration > 0 else 0.0
        heading = bearing(a, b) if length > 0 else 0.0
        return Position(
            latitude=a.latitude + (b.latitude - a.latitude) * fraction,
            longitude=a.longitude + (b.longitude - a.longitude) * fraction,
            altitude=a.altitude + (b.altitude - a.altitude) * fraction,
            speed=speed,
            heading=heading,
        )


# -- GPX ---------------------------------------------------------------------


def _parse_time(text: str, where: str) -> float:
    try:
        stamp = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise RouteError(f"{where}: bad <time> {text.strip()!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


def _parse_float(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RouteError(f"{where}: bad {what} {text.strip()!r}") from None
    if not math.isfinite(value):
        raise RouteError(f"{where}: bad {what} {text.strip()!r}")
    return value


@attrs.define
class _GpxReader:
    """Collects ``trkpt`` elements from expat's callbacks, with line numbers."""

    parser: expat.XMLParserType
    points: list[RoutePoint] = attrs.Factory(list)
    _open: dict[str, str] | None = None
    _line: int = 0
    _child: str | None = None
    _text: list[str] = attrs.Factory(list)
    _children: dict[str, str] = attrs.Factory(dict)

    def start(self, name: str, attributes: dict[str, str]) -> None:
        local = name.rpartition(" ")[2]
        if local == "trkpt":
            self._open = attributes
            self._line = self.parser.CurrentLineNumber
            self._children = {}
        elif self._open is not None and local in ("ele", "time"):
            self._child = local
            self._text = []

    def text(self, data: str) -> None:
        if self._child is not None:
            self._text.append(data)

    def end(self, name: str) -> None:
        local = name.rpartition(" ")[2]
        if local == self._child:
            self._children[local] = "".join(self._text)
            self._child = None
        elif local == "trkpt" and self._open is not None:
            self.points.append(self._point())
            self._open = None

    def _point(self) -> RoutePoint:
        assert self._open is not None
        where = f"line {self._line}, <trkpt> #{len(self.points) + 1}"
        values: dict[str, float] = {}
        for key in ("lat", "lon"):
            if key not in self._open:
                raise RouteError(f"{where}: missing attribute {key!r}")
            values[key] = _parse_float(self._open[key], where, f"{key!r}")
        altitude = 0.0
        if "ele" in self._children:
            altitude = _parse_float(self._children["ele"], where, "<ele>")
        time = None
        if "time" in self._children:
            time = _parse_time(self._children["time"], where)
        return RoutePoint(values["lat"], values["lon"], altitude, time)


def parse_gpx(text: str, *, speed: float = DEFAULT_SPEED) -> Route:
    """The route of the ``trkpt`` elements of a GPX document, in order.

    Raises:
      RouteError: the XML is malformed, a point lacks ``lat`` or ``lon``,
        a number or time is unreadable, or there are no points.
    """
    parser = expat.ParserCreate(namespace_separator=" ")
    reader = _GpxReader(parser)
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.text
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise RouteError(
            f"line {exc.lineno}, column {exc.offset + 1}: malformed GPX: "
            f"{expat.ErrorString(exc.code)}"
        ) from None
    if not reader.points:
        raise RouteError("GPX: no <trkpt> elements")
    return _make_route(reader.points, "GPX", speed)


# -- NMEA --------------------------------------------------------------------


def _nmea_checksum(body: str) -> int:
    value = 0
    for char in body:
        value ^= ord(char)
    return value


def _nmea_coordinate(value: str, hemisphere: str, where: str, what: str) -> float:
    # ddmm.mmmm for latitudes, dddmm.mmmm for longitudes.
    negative, positive = ("S", "N") if what == "latitude" else ("W", "E")
    if hemisphere not in (negative, positive) or "." not in value:
        raise RouteError(f"{where}: bad {what} {value!r},{hemisphere!r}")
    head = value.index(".") - 2
    try:
        degrees = int(value[:head]) + float(value[head:]) / 60.0
    except ValueError:
        raise RouteError(f"{where}: bad {what} {value!r}") from None
    return -degrees if hemisphere == negative else degrees


def _nmea_time(value: str, where: str) -> float:
    try:
        hours, minutes, seconds = int(value[0:2]), int(value[2:4]), float(value[4:])
    except ValueError:
        raise RouteError(f"{where}: bad time {value!r}") from None
    if len(value) < 6 or hours > 23 or minutes > 59 or seconds >= 61:
        raise RouteError(f"{where}: bad time {value!r}")
    return hours * 3600 + minutes * 60 + seconds


@attrs.frozen
class _Fix:
    time: float
    latitude: float
    longitude: float
    altitude: float | None


def _nmea_sentence(line: str, where: str) -> _Fix | None:
    """The fix in one sentence, or None for sentences without one."""
    if not line.startswith("$"):
        raise RouteError(f"{where}: not an NMEA sentence")
    body, star, checksum = line[1:].partition("*")
    if star:
        try:
            expected = int(checksum, 16)
        except ValueError:
            raise RouteError(f"{where}: bad checksum {checksum!r}") from None
        if expected != _nmea_checksum(body):
            raise RouteError(
                f"{where}: checksum {checksum} does not match "
                f"{_nmea_checksum(body):02X}"
            )
    fields = body.split(",")
    kind = fields[0][2:]
    where = f"{where} (${fields[0]})"
    if kind == "RMC":
        if len(fields) < 10:
            raise RouteError(f"{where}: {len(fields) - 1} fields, RMC needs 9 or more")
        # "V" is a void fix: the receiver has no position yet.
        if fields[2] != "A":
            return None
        return _Fix(
            _nmea_time(fields[1], where),
            _nmea_coordinate(fields[3], fields[4], where, "latitude"),
            _nmea_coordinate(fields[5], fields[6], where, "longitude"),
            None,
        )
    if kind == "GGA":
        if len(fields) < 10:
            raise RouteError(f"{where}: {len(fields) - 1} fields, GGA needs 9 or more")
        # Fix quality 0 is "no fix".
        if fields[6] in ("", "0"):
            return None
        altitude = _parse_float(fields[9], where, "altitude") if fields[9] else None
        return _Fix(
            _nmea_time(fields[1], where),
            _nmea_coordinate(fields[2], fields[3], where, "latitude"),
            _nmea_coordinate(fields[4], fields[5], where, "longitude"),
            altitude,
        )
    return None


def parse_nmea(text: str, *, speed: float = DEFAULT_SPEED) -> Route:
    """The route of the fixes in NMEA 0183 text (RMC and GGA, any talker).

    An RMC and a GGA sentence with the same time make one point (the GGA
    one brings the altitude).  Times are the time of day; a time smaller
    than the previous one is taken as the next day.  Void fixes (RMC status
    ``V``, GGA quality 0) and other sentences are skipped.

    Raises:
      RouteError: a line is not a sentence, its checksum is wrong, or a
        field of an RMC or GGA sentence is unreadable; or there are no fixes.
    """
    points: list[RoutePoint] = []
    last_time: float | None = None
    day = 0.0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fix = _nmea_sentence(line, f"line {number}")
        if fix is None:
            continue
        if last_time is not None and fix.time + day < last_time:
            day += 86400.0
        time = fix.time + day
        if points and time == last_time:
            previous = points[-1]
            if fix.altitude is not None:
                points[-1] = attrs.evolve(previous, altitude=fix.altitude)
            continue
        altitude = fix.altitude or 0.0
        points.append(RoutePoint(fix.latitude, fix.longitude, altitude, time))
        last_time = time
    if not points:
        raise RouteError("NMEA: no RMC or GGA fixes")
    return _make_route(points, "NMEA", speed)


# -- entry points --------------------------------------------------------------


def _make_route(points: Sequence[RoutePoint], kind: str, speed: float) -> Route:
    try:
        return Route(points, speed)
    except RouteError as exc:
        raise RouteError(f"{kind}: {exc}") from None


def parse_route(text: str, *, speed: float = DEFAULT_SPEED) -> Route:
    """A route from GPX (text starting with ``<``) or NMEA text."""
    if text.lstrip().startswith("<"):
        return parse_gpx(text, speed=speed)
    return parse_nmea(text, speed=speed)


def load_route(path: str | pathlib.Path, *, speed: float = DEFAULT_SPEED) -> Route:
    """The route in the GPX or NMEA file at ``path``.

    Raises:
      RouteError: as ``parse_route``, with the file name in front.
      OSError: the file cannot be read.
    """
    path = pathlib.Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        return parse_route(text, speed=speed)
    except RouteError as exc:
        raise RouteError(f"{path}: {exc}") from None


def route_from_points(
    points: Iterable[tuple[float, float, float]], *, speed: float = DEFAULT_SPEED
) -> Route:
    """An untimed route through ``(latitude, longitude, altitude)`` points."""
    return Route([RoutePoint(lat, lon, alt) for lat, lon, alt in points], speed)


def default_route() -> Route:
    """A loop of about 12 km through Trondheim, driven at 10 m/s."""
    return route_from_points(_TRONDHEIM)
