from metered.cli import main

raise SystemExit(main())
