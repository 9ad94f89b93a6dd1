"""``python -m components.data.synthetic``: see :mod:`components.data.synthetic.cli`."""

import sys

from components.data.synthetic.cli import main

if __name__ == "__main__":
    main(sys.argv[1:])
