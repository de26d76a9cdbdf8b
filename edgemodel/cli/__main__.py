import sys

from edgemodel.cli import main

sys.exit(main())
