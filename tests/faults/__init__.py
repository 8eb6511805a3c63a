"""The fault suite (`make faults`): tiny studies on this machine, each with a fault injected
(a killed or stopped driver, two drivers, a tracking server away, S3 storage, a lost Ray
node), counted for what was lost or left behind. Excluded from `make test`."""
