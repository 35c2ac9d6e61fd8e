package main

// target is one architecture a release is built for, with its name in each
// scheme.
type target struct {
	Name   string // in file names: thingcert_1.2.3_linux_<Name>.tar.gz
	GOARCH string
	GOARM  string
	Deb    string // dpkg --print-architecture on the device
	// DebSuffix distinguishes two packages of one Debian architecture: the
	// ARMv6 build is armhf too, as Raspberry Pi OS calls it, and follows
	// Raspbian's own convention of a "+rpi1" version for ARMv6 rebuilds.
	DebSuffix string
}

// targets: Debian's armhf is ARMv7, so its package is a GOARM=7 build. The
// 32-bit Raspberry Pi OS is armhf too, but ARMv6 (for the Pi Zero and Pi 1):
// a GOARM=7 binary dies there on an illegal instruction, while a GOARM=6 one
// runs on every Pi and every ARMv7 board. That build is labelled armhf (not
// armel: Debian's armel is ARMv5 without a floating-point unit, and GOARM=6
// uses VFP) with the version suffix +rpi1.
var targets = []target{
	{Name: "amd64", GOARCH: "amd64", Deb: "amd64"},
	{Name: "arm64", GOARCH: "arm64", Deb: "arm64"},
	{Name: "armv7", GOARCH: "arm", GOARM: "7", Deb: "armhf"},
	{Name: "armv6", GOARCH: "arm", GOARM: "6", Deb: "armhf", DebSuffix: "+rpi1"},
}

func targetNames() []string {
	var n []string
	for _, t := range targets {
		n = append(n, t.Name)
	}
	return n
}
