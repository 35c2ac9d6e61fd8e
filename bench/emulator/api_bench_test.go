package emulatorbench

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"

	"github.com/thingcert/thingcert/emulator"
)

// BenchmarkListThings lists 10,000 things through the control-plane API with
// aws-sdk-go-v2's paginator, as a fleet script does: one op is the whole
// listing (every page, SigV4-signed over HTTPS on loopback). The emulator runs
// in this process, in memory.
//
//	go test -run '^$' -bench ListThings -benchtime 5x ./bench/emulator/
func BenchmarkListThings(b *testing.B) {
	const things = 10_000
	ctx := context.Background()
	emu, err := emulator.Start(ctx, emulator.Config{APIListen: "127.0.0.1:0", Accounts: []emulator.Account{{Name: "fleet"}}})
	if err != nil {
		b.Fatal(err)
	}
	defer emu.Close()
	for i := range things {
		if _, err := emu.CreateThing(ctx, "fleet", fmt.Sprintf("gw-%05d", i), map[string]string{"site": fmt.Sprint(i % 7)}); err != nil {
			b.Fatal(err)
		}
	}
	key, err := emu.AccessKey("fleet")
	if err != nil {
		b.Fatal(err)
	}
	client := iot.New(iot.Options{
		Region:       key.Region,
		BaseEndpoint: aws.String(emu.APIURL()),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: key.AccessKeyID, SecretAccessKey: key.SecretAccessKey}, nil
		}),
		HTTPClient: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: emu.RootCAs(), MinVersion: tls.VersionTLS12}}},
	})
	for _, size := range []int32{250, 50} {
		b.Run(fmt.Sprintf("maxResults=%d", size), func(b *testing.B) {
			pages := 0
			for b.Loop() {
				n := 0
				p := iot.NewListThingsPaginator(client, &iot.ListThingsInput{MaxResults: aws.Int32(size)})
				for p.HasMorePages() {
					out, err := p.NextPage(ctx)
					if err != nil {
						b.Fatal(err)
					}
					n += len(out.Things)
					pages++
				}
				if n != things {
					b.Fatalf("listed %d things, want %d", n, things)
				}
			}
			b.ReportMetric(float64(pages)/float64(b.N), "pages/op")
		})
	}
}
