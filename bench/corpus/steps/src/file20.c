/* Generated source 20 of the steps context. */
int f20(int x) { return x * 20 + 1; }
