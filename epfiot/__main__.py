from epfiot.cli import main

raise SystemExit(main())
