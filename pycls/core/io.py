"""The one atomic file write (a temporary file beside the target, then os.replace): a reader
sees the old file or the new one, never a partial one. Torch-free, for tools run without torch.
"""

import os
import uuid

TMP_PREFIX = ".tmp_"  # temporary files never match a checkpoint's or a log's name


def temp_path(path):
    """Returns a unique temporary path beside path, ending in its extension (tools pick by it)."""
    folder, name = os.path.split(path)
    unique = "{}.{}{}".format(os.getpid(), uuid.uuid4().hex[:8], os.path.splitext(name)[1])
    return os.path.join(folder, "{}{}.{}".format(TMP_PREFIX, name, unique))


def remove_quietly(path):
    """Removes a file if it exists."""
    try:
        os.remove(path)
    except OSError:
        pass


def write_atomic(path, write, text=False, fsync=False, by_path=False):
    """Writes path atomically: write(file), or write(temp path) with by_path, fills a temporary
    file that then replaces path (removed on any failure); fsync puts data and name on disk."""
    tmp = temp_path(path)
    try:
        if by_path:
            write(tmp)
        else:
            with open(tmp, "x" if text else "xb") as f:
                write(f)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    if fsync:  # the folder entry too, where the file system allows it
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:
            pass
        os.close(fd)
    return path
