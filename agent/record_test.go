package agent

import (
	"os"
	"testing"
	"time"
)

func TestDaemonRecordRunning(t *testing.T) {
	dir := t.TempDir()
	if rec, err := ReadDaemonRecord(dir); rec != nil || err != nil || rec.Running() {
		t.Fatalf("no record: %+v, %v", rec, err)
	}
	self := &DaemonRecord{PID: os.Getpid()}
	self.BootID, _ = bootID()
	self.StartTicks, _ = processStartTicks(self.PID)
	if err := writeDaemonRecord(dir, self); err != nil {
		t.Fatal(err)
	}
	rec, err := ReadDaemonRecord(dir)
	if err != nil || !rec.Running() {
		t.Fatalf("this process's record: running %v, %v", rec.Running(), err)
	}
	for name, r := range map[string]DaemonRecord{
		"stopped":       {PID: self.PID, BootID: self.BootID, StartTicks: self.StartTicks, Stopped: time.Now()},
		"other boot":    {PID: self.PID, BootID: "another-boot", StartTicks: self.StartTicks},
		"reused pid":    {PID: self.PID, BootID: self.BootID, StartTicks: self.StartTicks + 1},
		"no such pid":   {PID: 1 << 30},
		"no pid at all": {},
	} {
		if r.Running() {
			t.Errorf("%s: reported running", name)
		}
	}
}
