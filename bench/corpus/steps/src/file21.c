/* Generated source 21 of the steps context. */
int f21(int x) { return x * 21 + 1; }
