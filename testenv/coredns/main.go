// CoreDNS with only the plugins the real node's cluster DNS uses (the directive order stays
// upstream's, in core/dnsserver/zdirectives.go): Service and Pod records from the API
// server, answers cached, health and readiness endpoints. No `forward`: nothing outside the
// cluster is ever asked.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() { coremain.Run() }
