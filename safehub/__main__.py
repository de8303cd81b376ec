import os
import sys

# `python -m safehub` puts the working directory first on sys.path. Run in an
# untrusted checkout, a `torch/` folder there would be what the host's own
# `import torch` (and its native preload) opens: code run in the host. The
# command needs nothing from the working directory on sys.path (as `python -P`).
if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from ._cli import main  # noqa: E402

sys.exit(main())
