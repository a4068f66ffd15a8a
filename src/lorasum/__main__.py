from lorasum.cli import main

raise SystemExit(main())
