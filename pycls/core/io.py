"""The one atomic file write: a temporary file in the target's folder, then os.replace.

A reader sees the old file or the new one, never a partial one; a failed write removes its
temporary file and leaves the old file as it was. Torch-free, so the tools that run without
torch (tools/final_result.py) use it too.
"""

import os
import uuid

# Temporary files start with this (so they never match a checkpoint's or a log's name)
TMP_PREFIX = ".tmp_"


def temp_path(path):
    """Returns a unique temporary file path in the folder of path (same file system), with
    path's extension (tools that pick a format by the extension see the right one)."""
    folder, name = os.path.split(path)
    unique = "{}.{}".format(os.getpid(), uuid.uuid4().hex[:8])
    ext = os.path.splitext(name)[1]
    return os.path.join(folder, "{}{}.{}{}".format(TMP_PREFIX, name, unique, ext))


def remove_quietly(path):
    """Removes a file if it exists."""
    try:
        os.remove(path)
    except OSError:
        pass


def fsync_dir(folder):
    """Flushes a folder's entries to disk (where the OS allows it)."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path, write, text=False, fsync=False, by_path=False):
    """Writes path atomically: write(file) (or write(temp path) with by_path) fills a temporary
    file in path's folder, which then replaces path; on any failure the temporary file is
    removed and the error raised. With fsync the data and the folder entry reach the disk."""
    tmp = temp_path(path)
    try:
        if by_path:
            write(tmp)
            if fsync:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
        else:
            with open(tmp, "x" if text else "xb") as f:
                write(f)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    if fsync:
        fsync_dir(os.path.dirname(path))
    return path
