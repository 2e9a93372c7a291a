import sys

from gkt import main

sys.exit(main())
