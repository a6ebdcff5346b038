"""BrandGen web app: `python app.py [--host H] [--port P] [--share] [--auth user:pass]`."""

import sys

from brandgen.cli import main

if __name__ == "__main__":
    main(["serve", *sys.argv[1:]])
