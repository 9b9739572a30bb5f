"""`python -m wsl.commands ...`: the `wsl` command, without relying on the script being on PATH."""

import sys

from wsl.commands import main

sys.exit(main())
