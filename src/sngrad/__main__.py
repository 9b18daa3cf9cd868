import sys

from sngrad.cli import main

sys.exit(main())
