import sys

from gkt.cli import main

sys.exit(main())
