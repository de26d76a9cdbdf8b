import sys

from edgemodel_dev.cli import main

sys.exit(main())
