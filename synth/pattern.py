"""Machine-readable test-pattern video frames.

Every frame painted by :func:`paint_pattern` carries, in large black/white cells
on the luma plane, a CRC-protected code word::

    magic (8 bits, 0x5A) | source_id (8) | frame_index (32) | capture_ms (48) | CRC-32

``capture_ms`` is the full wall-clock time in milliseconds since the Unix epoch
(48 bits, good until year 10889) -- no modulo arithmetic is needed on the
receiving side.

Layout: the picture is divided into a virtual grid of ``GRID_COLS`` x
``GRID_ROWS`` (32 x 24) cells that scales with the frame (10x10 px at 320x240,
5x5 px at 160x120, 40x30 px at 1280x720). Rows are used as follows:

* row 0: sync/guard row, alternating white/black starting with white; used to
  calibrate the black and white levels of the received picture;
* rows 1-4: the 128 code bits, row-major, MSB first (white = 1);
* row 5: reference luma gradient (32 steps from black to white);
* rows 6-22: static per-source background (smooth luma gradient, chroma from
  ``source_id``) with a textured block whose position is a function of
  ``frame_index`` (so the encoder sees real motion and a frozen picture is
  visible);
* row 23: bottom guard row, alternating black/white starting with black.

:func:`read_pattern` only looks at the luma plane. It returns ``None`` when no
valid code word is found (no sync, CRC/magic mismatch): the fields of a returned
:class:`PatternInfo` are therefore always the values that were painted (the
probability of an undetected misread is ~2^-40). ``intact`` additionally tells
whether the *whole* picture decoded cleanly: every code cell was unambiguous,
and the reference gradient, the guard rows and a grid of background sample
patches (excluding the moving block) match the expected luma within a
tolerance. Frame width and height must be even (yuv420p).
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

__all__ = [
    "CAPTURE_MS_BITS",
    "GRID_COLS",
    "GRID_ROWS",
    "PatternInfo",
    "PatternPainter",
    "paint_pattern",
    "paint_pattern_planes",
    "read_pattern",
    "read_pattern_luma",
    "source_color_uv",
]

U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]

GRID_COLS = 32
GRID_ROWS = 24
CAPTURE_MS_BITS = 48
MAGIC = 0x5A

BLACK = 16
WHITE = 235

_SYNC_ROW = 0
_DATA_ROWS = (1, 5)  # [start, stop)
_GRADIENT_ROW = 5
_BOTTOM_ROW = GRID_ROWS - 1
_MOVER_COLS = 3  # moving block size in cells
_MOVER_ROWS = 3
_MOVER_ROW_MIN = 8
_MOVER_ROW_MAX = _BOTTOM_ROW - 1 - _MOVER_ROWS  # block stays above row 22

# Tolerances, as a fraction of the measured white-black contrast.
_MIN_CONTRAST = 80.0  # luma levels (nominal contrast is 219)
_DATA_MARGIN = 0.35  # a code cell must be this far from the mid threshold to be "clean"
_REF_TOLERANCE = 0.16  # max abs deviation of a reference/background patch
_SYNC_MARGIN = 0.25
_MAX_SPREAD = 0.3  # max (max - min) luma inside a background patch


@dataclass(frozen=True, slots=True)
class PatternInfo:
    """Decoded content of a pattern frame.

    Attributes:
        source_id: 0-255, who painted the frame.
        frame_index: 0 .. 2**32-1, the sender's frame counter.
        capture_ms: sender wall clock (ms since Unix epoch, 48 bits) when painted.
        intact: True when the whole picture matched the expected pattern (not
            just the CRC-protected code). ``False`` means the values are correct
            but the picture shows codec damage (e.g. concealment after loss).
    """

    source_id: int
    frame_index: int
    capture_ms: int
    intact: bool


def source_color_uv(source_id: int) -> tuple[int, int]:
    """Background chroma (U, V) for a source: hues spread by the golden angle."""
    hue = math.radians((source_id * 137.508) % 360.0)
    return round(128 + 64 * math.cos(hue)), round(128 + 64 * math.sin(hue))


def _edges(size: int, n: int) -> npt.NDArray[np.int64]:
    return np.array([round(i * size / n) for i in range(n + 1)], dtype=np.int64)


def _mover_origin(frame_index: int) -> tuple[float, float]:
    """Top-left corner of the moving block in grid units (a function of frame_index)."""

    def tri(pos: float, span: float) -> float:
        period = 2.0 * span
        p = pos % period
        return p if p <= span else period - p

    x = tri(frame_index * 0.5, float(GRID_COLS - _MOVER_COLS))
    y = _MOVER_ROW_MIN + tri(frame_index * 0.25, float(_MOVER_ROW_MAX - _MOVER_ROW_MIN))
    return x, y


@dataclass(frozen=True)
class _Geometry:
    width: int
    height: int
    x_edges: npt.NDArray[np.int64]
    y_edges: npt.NDArray[np.int64]
    cell_w: npt.NDArray[np.int64]
    cell_h: npt.NDArray[np.int64]
    # sampling patches: per-cell centre patch of fixed size (sw x sh)
    code_sw: int
    code_sh: int
    code_cols: npt.NDArray[np.intp]  # flat column indices, GRID_COLS * code_sw
    code_rows: npt.NDArray[np.intp]  # rows 0..5 patches, 6 * code_sh
    ref_sw: int
    ref_sh: int
    ref_cols: npt.NDArray[np.intp]
    ref_rows: npt.NDArray[np.intp]  # rows 6..23 patches
    expected_bg: F64  # expected normalized (0..1) means for rows 6..23 (background only)
    expected_gradient: F64
    expected_bottom: F64


def _patch_index(
    edges: npt.NDArray[np.int64], cells: range, frac: float, max_px: int
) -> tuple[int, npt.NDArray[np.intp]]:
    sizes = np.diff(edges)
    s = max(1, min(max_px, int(min(sizes[list(cells)]) * frac)))
    starts = [int(edges[c] + (sizes[c] - s) // 2) for c in cells]
    idx = (np.array(starts, dtype=np.intp)[:, None] + np.arange(s, dtype=np.intp)).ravel()
    return s, idx


def _background_luma(width: int, height: int) -> U8:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    y = 70.0 + 90.0 * (xx / max(1, width - 1)) * 0.6 + 90.0 * (yy / max(1, height - 1)) * 0.4
    out: U8 = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return out


@functools.lru_cache(maxsize=32)
def _geometry(width: int, height: int) -> _Geometry:
    if width < 32 or height < 24:
        raise ValueError(f"frame too small for the pattern: {width}x{height}")
    xe = _edges(width, GRID_COLS)
    ye = _edges(height, GRID_ROWS)
    cw = np.diff(xe)
    ch = np.diff(ye)
    code_sw, code_cols = _patch_index(xe, range(GRID_COLS), 0.5, 8)
    code_sh, code_rows = _patch_index(ye, range(0, _GRADIENT_ROW + 1), 0.5, 8)
    ref_sw, ref_cols = _patch_index(xe, range(GRID_COLS), 0.34, 6)
    ref_sh, ref_rows = _patch_index(ye, range(_GRADIENT_ROW + 1, GRID_ROWS), 0.34, 6)
    bg = _background_luma(width, height).astype(np.float64)
    n_ref_rows = GRID_ROWS - _GRADIENT_ROW - 1
    bg_means = (
        bg[np.ix_(ref_rows, ref_cols)]
        .reshape(n_ref_rows, ref_sh, GRID_COLS, ref_sw)
        .mean(axis=(1, 3))
    )
    expected_bg = (bg_means - BLACK) / (WHITE - BLACK)
    bottom = np.arange(GRID_COLS) % 2 == 1  # black first
    expected_bg[-1, :] = bottom.astype(np.float64)
    gradient = np.rint(BLACK + (WHITE - BLACK) * np.arange(GRID_COLS) / (GRID_COLS - 1))
    return _Geometry(
        width=width,
        height=height,
        x_edges=xe,
        y_edges=ye,
        cell_w=cw,
        cell_h=ch,
        code_sw=code_sw,
        code_sh=code_sh,
        code_cols=code_cols,
        code_rows=code_rows,
        ref_sw=ref_sw,
        ref_sh=ref_sh,
        ref_cols=ref_cols,
        ref_rows=ref_rows,
        expected_bg=expected_bg,
        expected_gradient=(gradient - BLACK) / (WHITE - BLACK),
        expected_bottom=bottom.astype(np.float64),
    )


def _encode_bits(source_id: int, frame_index: int, capture_ms: int) -> npt.NDArray[np.uint8]:
    if not 0 <= source_id <= 0xFF:
        raise ValueError(f"source_id out of range 0..255: {source_id}")
    payload = (
        bytes([MAGIC, source_id])
        + (frame_index & 0xFFFFFFFF).to_bytes(4, "big")
        + (capture_ms & ((1 << CAPTURE_MS_BITS) - 1)).to_bytes(6, "big")
    )
    word = payload + zlib.crc32(payload).to_bytes(4, "big")
    return np.unpackbits(np.frombuffer(word, dtype=np.uint8)).reshape(4, GRID_COLS)


class PatternPainter:
    """Paints pattern frames for one (width, height, source_id).

    The static background is rendered once; :meth:`paint_planes` copies it and
    stamps the code cells and the moving block (~0.1 ms at 640x480).
    """

    def __init__(self, width: int, height: int, source_id: int) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"width and height must be even: {width}x{height}")
        if not 0 <= source_id <= 0xFF:
            raise ValueError(f"source_id out of range 0..255: {source_id}")
        self.width = width
        self.height = height
        self.source_id = source_id
        g = _geometry(width, height)
        self._g = g
        ye = g.y_edges
        y = _background_luma(width, height)
        # sync row: white, black, white, ...
        sync = np.where(np.arange(GRID_COLS) % 2 == 0, WHITE, BLACK).astype(np.uint8)
        y[ye[_SYNC_ROW] : ye[_SYNC_ROW + 1], :] = np.repeat(sync, g.cell_w)[None, :]
        grad = np.rint(BLACK + (WHITE - BLACK) * np.arange(GRID_COLS) / (GRID_COLS - 1))
        y[ye[_GRADIENT_ROW] : ye[_GRADIENT_ROW + 1], :] = np.repeat(
            grad.astype(np.uint8), g.cell_w
        )[None, :]
        bottom = np.where(np.arange(GRID_COLS) % 2 == 1, WHITE, BLACK).astype(np.uint8)
        y[ye[_BOTTOM_ROW] :, :] = np.repeat(bottom, g.cell_w)[None, :]
        u_val, v_val = source_color_uv(source_id)
        ch, cw = height // 2, width // 2
        u = np.full((ch, cw), u_val, dtype=np.uint8)
        v = np.full((ch, cw), v_val, dtype=np.uint8)
        # neutral chroma behind the code rows and the bottom guard row
        code_bottom = int(ye[_GRADIENT_ROW + 1]) // 2
        u[:code_bottom, :] = 128
        v[:code_bottom, :] = 128
        u[int(ye[_BOTTOM_ROW]) // 2 :, :] = 128
        v[int(ye[_BOTTOM_ROW]) // 2 :, :] = 128
        self._bg = np.concatenate([y.ravel(), u.ravel(), v.ravel()])
        self._ysize = width * height
        self._csize = ch * cw
        self._data_y0 = int(ye[_DATA_ROWS[0]])
        self._data_y1 = int(ye[_DATA_ROWS[1]])
        self._data_cell_h = g.cell_h[_DATA_ROWS[0] : _DATA_ROWS[1]]
        # moving block texture (2x2 checker of light/dark luma)
        mw = max(2, round(_MOVER_COLS * width / GRID_COLS))
        mh = max(2, round(_MOVER_ROWS * height / GRID_ROWS))
        self._mover_w = mw - mw % 2
        self._mover_h = mh - mh % 2
        yy, xx = np.mgrid[0 : self._mover_h, 0 : self._mover_w]
        checker = ((yy * 2 // self._mover_h) + (xx * 2 // self._mover_w)) % 2
        self._mover_y = np.where(checker == 0, 215, 45).astype(np.uint8)
        self._mover_uv = (255 - u_val, 255 - v_val)

    def mover_rect(self, frame_index: int) -> tuple[int, int, int, int]:
        """Pixel rectangle (x0, y0, x1, y1) of the moving block, both coords even."""
        gx, gy = _mover_origin(frame_index)
        x0 = int(gx * self.width / GRID_COLS) & ~1
        y0 = int(gy * self.height / GRID_ROWS) & ~1
        x0 = min(x0, self.width - self._mover_w)
        return x0, y0, x0 + self._mover_w, y0 + self._mover_h

    def paint_planes(self, frame_index: int, capture_ms: int) -> U8:
        """Return the frame as a ``(height * 3 // 2, width)`` yuv420p uint8 array."""
        buf = self._bg.copy()
        w, h = self.width, self.height
        y = buf[: self._ysize].reshape(h, w)
        bits = _encode_bits(self.source_id, frame_index, capture_ms)
        vals = np.where(bits != 0, WHITE, BLACK).astype(np.uint8)
        y[self._data_y0 : self._data_y1, :] = np.repeat(
            np.repeat(vals, self._g.cell_w, axis=1), self._data_cell_h, axis=0
        )
        x0, y0, x1, y1 = self.mover_rect(frame_index)
        y[y0:y1, x0:x1] = self._mover_y
        u = buf[self._ysize : self._ysize + self._csize].reshape(h // 2, w // 2)
        v = buf[self._ysize + self._csize :].reshape(h // 2, w // 2)
        u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = self._mover_uv[0]
        v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = self._mover_uv[1]
        return buf.reshape(h * 3 // 2, w)

    def paint(self, frame_index: int, capture_ms: int) -> av.VideoFrame:
        """Return the frame as a yuv420p :class:`av.VideoFrame` (pts not set)."""
        return av.VideoFrame.from_ndarray(
            self.paint_planes(frame_index, capture_ms), format="yuv420p"
        )


@functools.lru_cache(maxsize=64)
def _painter(width: int, height: int, source_id: int) -> PatternPainter:
    return PatternPainter(width, height, source_id)


def paint_pattern(
    width: int, height: int, frame_index: int, capture_ms: int, source_id: int
) -> av.VideoFrame:
    """Paint one pattern frame as a yuv420p :class:`av.VideoFrame` (pts/time_base unset).

    ``capture_ms`` is wall-clock milliseconds since the Unix epoch (48 bits kept),
    ``frame_index`` is kept modulo 2**32, ``source_id`` is 0..255.
    Painters are cached per (width, height, source_id).
    """
    return _painter(width, height, source_id).paint(frame_index, capture_ms)


def paint_pattern_planes(
    width: int, height: int, frame_index: int, capture_ms: int, source_id: int
) -> U8:
    """Like :func:`paint_pattern` but returns the ``(h*3//2, w)`` yuv420p array."""
    return _painter(width, height, source_id).paint_planes(frame_index, capture_ms)


_LUMA_FIRST_FORMATS = frozenset(
    {
        "yuv420p",
        "yuvj420p",
        "yuv422p",
        "yuvj422p",
        "yuv444p",
        "yuvj444p",
        "nv12",
        "nv21",
        "gray",
        "gray8",
    }
)


def _luma(frame: av.VideoFrame) -> U8:
    if frame.format.name not in _LUMA_FIRST_FORMATS:
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    stride = plane.line_size
    arr = np.frombuffer(plane, dtype=np.uint8)  # type: ignore[call-overload]
    rows: U8 = arr[: stride * frame.height].reshape(frame.height, stride)
    return rows[:, : frame.width]


def read_pattern(frame: av.VideoFrame) -> PatternInfo | None:
    """Decode the pattern code from a (received) video frame's luma plane.

    Returns ``None`` if no valid code word is found. Never returns wrong values
    (CRC-32 + magic byte). See :class:`PatternInfo` for ``intact``.
    """
    return read_pattern_luma(_luma(frame))


def read_pattern_luma(y: U8) -> PatternInfo | None:
    """Same as :func:`read_pattern` for a 2-D uint8 luma array (height, width)."""
    height, width = y.shape
    try:
        g = _geometry(width, height)
    except ValueError:
        return None
    n_code_rows = _GRADIENT_ROW + 1
    code = y[np.ix_(g.code_rows, g.code_cols)].reshape(n_code_rows, g.code_sh, GRID_COLS, g.code_sw)
    means = code.mean(axis=(1, 3))
    sync = means[_SYNC_ROW]
    white = float(sync[0::2].mean())
    black = float(sync[1::2].mean())
    contrast = white - black
    if contrast < _MIN_CONTRAST:
        return None
    thr = (white + black) / 2.0
    half = contrast / 2.0
    sync_margin = (sync - thr) * np.where(np.arange(GRID_COLS) % 2 == 0, 1.0, -1.0) / half
    if float(sync_margin.min()) < _SYNC_MARGIN:
        return None
    data = means[_DATA_ROWS[0] : _DATA_ROWS[1]]
    bits = data > thr
    word = np.packbits(bits.ravel()).tobytes()
    if word[0] != MAGIC or zlib.crc32(word[:12]) != int.from_bytes(word[12:], "big"):
        return None
    source_id = word[1]
    frame_index = int.from_bytes(word[2:6], "big")
    capture_ms = int.from_bytes(word[6:12], "big")

    intact = bool(float(np.abs(data - thr).min()) / half >= _DATA_MARGIN)
    if intact:
        grad = (means[_GRADIENT_ROW] - black) / contrast
        intact = float(np.abs(grad - g.expected_gradient).max()) <= _REF_TOLERANCE
    if intact:
        n_ref_rows = GRID_ROWS - n_code_rows
        ref = y[np.ix_(g.ref_rows, g.ref_cols)].reshape(n_ref_rows, g.ref_sh, GRID_COLS, g.ref_sw)
        dev = np.abs((ref.mean(axis=(1, 3)) - black) / contrast - g.expected_bg)
        # the expected picture is flat within each patch: a large spread means noise/blocks
        spread = ref.max(axis=(1, 3)).astype(np.float64) - ref.min(axis=(1, 3))
        dev = np.maximum(dev, spread / contrast * (_REF_TOLERANCE / _MAX_SPREAD))
        # exclude the cells around the moving block (+1 cell margin)
        gx, gy = _mover_origin(frame_index)
        r0 = max(0, int(gy) - 1 - n_code_rows)
        r1 = int(gy) + _MOVER_ROWS + 2 - n_code_rows
        c0 = max(0, int(gx) - 1)
        c1 = int(gx) + _MOVER_COLS + 2
        dev[r0:r1, c0:c1] = 0.0
        intact = float(dev.max()) <= _REF_TOLERANCE
    return PatternInfo(
        source_id=source_id, frame_index=frame_index, capture_ms=capture_ms, intact=intact
    )
