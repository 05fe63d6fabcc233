import sys

from kianax.cli import main

sys.exit(main())
