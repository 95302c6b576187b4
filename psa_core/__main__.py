from psa_core.cli import main

raise SystemExit(main())
