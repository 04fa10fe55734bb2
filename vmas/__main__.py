import sys

from vmas.cli import main

sys.exit(main())
