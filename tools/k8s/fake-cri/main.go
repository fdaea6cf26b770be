// Command fake-cri serves Kubernetes' own fake CRI runtime and image services
// (k8s.io/cri-client/pkg/fake) on a unix socket, so that a real kubelet runs with no
// container engine: it reports ready, "runs" pod sandboxes and containers in memory, and
// the kubelet still attaches, stages and publishes the pods' volumes for real.
//
// Usage: fake-cri --listen unix:///path/cri.sock
package main

import (
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"
)

func main() {
	listen := flag.String("listen", "", "the CRI endpoint to serve, unix:///path/cri.sock")
	flag.Parse()
	if *listen == "" {
		log.Fatal("fake-cri: --listen is required")
	}
	runtime := fake.NewFakeRemoteRuntime()
	// The kubelet takes its cgroup driver from the runtime when it says one.
	runtime.RuntimeService.FakeLinuxConfiguration = &runtimeapi.LinuxRuntimeConfiguration{
		CgroupDriver: runtimeapi.CgroupDriver_CGROUPFS,
	}
	// Every image "pulls" at once; the kubelet refuses an image that reports no size.
	runtime.ImageService.SetFakeImageSize(1 << 20)
	if err := runtime.Start(*listen); err != nil {
		log.Fatalf("fake-cri: %v", err)
	}
	log.Printf("fake-cri: serving on %s", *listen)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, os.Interrupt)
	<-signals
	runtime.Stop()
}
