"""Where each array sits inside a flat buffer."""

#: Element alignment of each array's slice inside a flat buffer (64 bytes of float32).
ALIGNMENT = 16


def aligned_offsets(sizes):
    """``(offsets, total)``: each size's start in a buffer where every slice begins on a
    multiple of ``ALIGNMENT`` elements, and the buffer's length."""
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += -(-size // ALIGNMENT) * ALIGNMENT
    return offsets, total
