import sys

from cookiebaker.cli import main

sys.exit(main())
