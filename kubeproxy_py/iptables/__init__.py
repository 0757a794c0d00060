"""kube-proxy's iptables mode: chain names (:mod:`.names`) and the pure renderer (:mod:`.render`)."""
