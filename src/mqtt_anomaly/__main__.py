from mqtt_anomaly.cli import main

main()
