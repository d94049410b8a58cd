import sys

from gpubp.cli import main

sys.exit(main())
