import sys

from pathsentry.cli import main

sys.exit(main())
