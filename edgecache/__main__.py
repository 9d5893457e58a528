import sys

from edgecache.cli import main

sys.exit(main())
