import sys

from greentrack.cli.main import main

sys.exit(main())
